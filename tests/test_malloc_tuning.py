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


def test_restart_adds_the_huge_pages_tunable_once():
  from irst_jax import malloc_tuning
  calls = []
  execve = lambda *args: calls.append(args)
  if not sys.platform.startswith("linux"):
    pytest.skip("glibc only")
  malloc_tuning.restart_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1",
                                         "HOME": "/h"}, execve)
  assert calls == [(sys.executable, [sys.executable, *sys.orig_argv[1:]],
                    {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1",
                     "HOME": "/h"})]
  malloc_tuning.restart_with_huge_pages({}, execve)
  assert calls[-1][2] == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  # Already set (the restarted program) or turned off: no restart.
  malloc_tuning.restart_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, execve)
  malloc_tuning.restart_with_huge_pages({"IRST_JAX_MALLOC_TUNING": "0"}, execve)
  assert len(calls) == 2


# Restarts with the tunable, then touches a 64 MB heap block and prints the tunables and the
# process's anonymous huge-page memory in kB.
_HUGE_PAGE_PROBE = r"""
import ctypes, os
from irst_jax import malloc_tuning
malloc_tuning.restart_with_huge_pages()
malloc_tuning.apply()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(64 << 20)
ctypes.memset(block, 1, 64 << 20)
huge = [line.split()[1] for line in open("/proc/self/smaps_rollup")
        if line.startswith("AnonHugePages:")]
print(os.environ["GLIBC_TUNABLES"] + "|" + huge[0])
"""


def _transparent_huge_pages() -> str:
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return f.read().split("[")[1].split("]")[0]
  except (OSError, IndexError):
    return "unavailable"


@pytest.mark.skipif(_transparent_huge_pages() not in ("always", "madvise"),
                    reason="the kernel gives no transparent huge pages")
@pytest.mark.parametrize("enabled", ["1", "0"])
def test_restarted_program_gets_huge_pages_for_its_heap(enabled):
  env = {"IRST_JAX_MALLOC_TUNING": enabled, "IRST_JAX_XLA_CPU_FLAGS": "0", "PATH": ""}
  tunables, huge_kb = subprocess.run(
      [sys.executable, "-c", _HUGE_PAGE_PROBE], env={**env, "GLIBC_TUNABLES": ""},
      capture_output=True, text=True, check=True).stdout.strip().split("|")
  if enabled == "1":
    assert tunables == "glibc.malloc.hugetlb=1"
    assert int(huge_kb) >= 32 << 10      # at least half of the block in 2 MB pages
  else:
    assert tunables == ""
    if _transparent_huge_pages() == "madvise":
      assert int(huge_kb) == 0
