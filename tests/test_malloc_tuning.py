"""irst_jax.malloc_tuning: large blocks come from the reused heap instead of fresh mmaps."""
import subprocess
import sys

import pytest

# Allocates and frees a 64 MB block twice; prints glibc's bytes in mmap'd blocks
# (mallinfo2().hblkhd) while the second one is alive.
_PROBE = r"""
import ctypes, os, sys
from irst_jax import malloc_tuning
print(malloc_tuning.apply())
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
      "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
block = libc.malloc(64 << 20)
libc.free(block)
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd >= 64 << 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("enabled", ["1", "0"])
def test_large_blocks_come_from_the_heap_when_applied(enabled):
  env = {"IRST_JAX_MALLOC_TUNING": enabled, "IRST_JAX_XLA_CPU_FLAGS": "0", "PATH": ""}
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  # Applied: no 64 MB mmap'd block; turned off: glibc's default mmap's it.
  assert out == (["True", "False"] if enabled == "1" else ["False", "True"])
