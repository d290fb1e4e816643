"""irst_jax.platform_settings: importing irst_jax changes nothing in the process; the entry
points' settings apply on the CPU backend only, decided before JAX starts."""
import json
import os
import subprocess
import sys

import pytest

from irst_jax import malloc_tuning, platform_settings, xla_cpu_flags

# Imports every module with a command-line entry point (and the library behind them), then
# prints whether the environment changed, whether JAX started a backend, and whether a 64 MB
# block still comes from mmap (glibc's default; False once malloc_tuning.apply has run).
_IMPORT_EVERYTHING = r"""
import ctypes, json, os
import jax   # sets TF_CPP_MIN_LOG_LEVEL and TPU_SKIP_MDS_QUERY itself
before = dict(os.environ)
import irst_jax, irst_jax.cpu, irst_jax.models, irst_jax.train, irst_jax.main, irst_jax.score
import irst_jax.import_weights, irst_jax.predict, irst_jax.serving.predict, irst_jax.data.stats
from jax._src import xla_bridge
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
      "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(64 << 20)
print(json.dumps({"environ_unchanged": dict(os.environ) == before,
                  "backend_started": xla_bridge.backends_are_initialized(),
                  "mmap_block": libc.mallinfo2().hblkhd >= 64 << 20}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc probe")
def test_importing_the_package_changes_nothing_and_starts_no_backend():
  env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _IMPORT_EVERYTHING], env=env, capture_output=True,
                       text=True, check=True).stdout.splitlines()[-1]
  assert json.loads(out) == {"environ_unchanged": True, "backend_started": False,
                             "mmap_block": True}


@pytest.mark.parametrize("environ,plugin,expected", [
    ({"JAX_PLATFORMS": "cpu"}, True, "cpu"),
    ({"JAX_PLATFORMS": "CUDA,cpu"}, False, "cuda"),
    ({"JAX_PLATFORMS": " tpu "}, False, "tpu"),
    ({}, True, "accelerator"),
    ({"JAX_PLATFORMS": ""}, False, "cpu"),
])
def test_expected_backend_rule(environ, plugin, expected):
  assert platform_settings.expected_backend(environ, lambda: plugin) == expected


@pytest.fixture
def calls(monkeypatch):
  """Records malloc tuning instead of changing this process's allocator; pretends jaxlib is of
  the series the XLA flags are for."""
  made = []
  monkeypatch.setattr(malloc_tuning, "apply", lambda environ: made.append("malloc") or True)
  monkeypatch.setattr(xla_cpu_flags, "_jaxlib_series", lambda: xla_cpu_flags.JAXLIB_SERIES[0])
  return made


def test_applied_on_cpu_with_one_restart_for_huge_pages(calls):
  env = {"PATH": "/usr/bin"}
  execve = lambda path, argv, environ: calls.append(("execve", environ["GLIBC_TUNABLES"]))
  assert platform_settings.apply(malloc=True, huge_pages=True, backend="cpu", environ=env,
                                 execve=execve)
  restarts = [("execve", malloc_tuning.HUGE_PAGES_TUNABLE)] if sys.platform.startswith(
      "linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc") else []
  assert calls == [*restarts, "malloc"]
  assert env["XLA_FLAGS"] == " ".join(xla_cpu_flags.FLAGS)
  # Without the options: the XLA flags only.
  calls.clear()
  env = {}
  assert platform_settings.apply(environ=env, backend="cpu", execve=execve)
  assert calls == [] and env == {"XLA_FLAGS": " ".join(xla_cpu_flags.FLAGS)}


@pytest.mark.parametrize("backend,environ", [
    ("gpu", {}), ("tpu", {}), (None, {"JAX_PLATFORMS": "cuda"})])
def test_nothing_applied_on_an_accelerator(calls, backend, environ):
  env = dict(environ)
  execve = lambda *args: calls.append("execve")
  assert not platform_settings.apply(malloc=True, huge_pages=True, backend=backend, environ=env,
                                     execve=execve)
  assert calls == [] and env == environ
