"""Process settings for the CPU backend, applied by the command-line entry points only.

Entry points (``irst_jax.main``, ``irst_jax.score``, ``irst_jax.serving.predict``, ...) call
:func:`apply` first in their ``__main__`` block; importing ``irst_jax`` or any of its modules
changes no environment variable, flag or allocator. On the CPU backend it adds irst_jax's XLA
CPU flags to ``XLA_FLAGS`` (`irst_jax.xla_cpu_flags`) and, where asked, tunes glibc's malloc
and restarts the program once with the heap on transparent huge pages
(`irst_jax.malloc_tuning`). On any other backend it does nothing, so no GPU or TPU host is
restarted.

The backend must be known before JAX initialises (XLA reads ``XLA_FLAGS`` when it creates
its CPU client, malloc settings must precede its threads), so :func:`expected_backend` decides
it from what JAX will decide from, without initialising it:

1. ``JAX_PLATFORMS`` set: its first entry ("cpu", or e.g. "cuda" / "tpu").
2. Otherwise JAX prefers an accelerator whose plugin is installed: a module in the
   ``jax_plugins`` namespace package or in the ``jax_plugins`` entry-point group (the CUDA and
   ROCm plugins), or ``libtpu`` for TPUs: "accelerator".
3. Otherwise "cpu".

A plugin installed on a host without its device (a CUDA wheel on a CPU-only machine) counts
as an accelerator: set ``JAX_PLATFORMS=cpu`` there to get the CPU settings.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
from typing import Callable, MutableMapping, Optional

from irst_jax import malloc_tuning, xla_cpu_flags

__all__ = ["apply", "expected_backend"]


def _accelerator_plugin_installed() -> bool:
  spec = importlib.util.find_spec("jax_plugins")
  if spec is not None and spec.submodule_search_locations is not None:
    if any(True for _ in pkgutil.iter_modules(list(spec.submodule_search_locations))):
      return True
  if importlib.metadata.entry_points(group="jax_plugins"):
    return True
  return importlib.util.find_spec("libtpu") is not None


def expected_backend(environ: MutableMapping[str, str] = os.environ,
                     plugin_installed: Callable[[], bool] = _accelerator_plugin_installed) -> str:
  """The backend JAX will start on, by the rule of the module docstring: the first entry of
  ``JAX_PLATFORMS`` (lower case), else "accelerator" if an accelerator plugin is installed,
  else "cpu". Initialises nothing."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower()
  return "accelerator" if plugin_installed() else "cpu"


def apply(*, malloc: bool = False, huge_pages: bool = False, backend: Optional[str] = None,
          environ: MutableMapping[str, str] = os.environ,
          execve: Callable[..., None] = os.execve) -> bool:
  """The CPU settings of an entry point; call it first in ``if __name__ == "__main__":``.

  Does nothing unless ``backend`` (default :func:`expected_backend`) is "cpu". On CPU:
  with ``huge_pages``, restarts the program once with the huge-pages malloc tunable
  (`malloc_tuning.restart_with_huge_pages`; the restarted program comes back here and goes
  on); adds the XLA CPU flags to ``environ["XLA_FLAGS"]`` (`xla_cpu_flags.apply`); with
  ``malloc``, keeps freed memory in glibc's heap (`malloc_tuning.apply`). The opt-outs
  ``IRST_JAX_XLA_CPU_FLAGS=0`` and ``IRST_JAX_MALLOC_TUNING=0`` hold. Returns whether the
  backend is CPU (the settings applied).
  """
  if (backend or expected_backend(environ)) != "cpu":
    return False
  if huge_pages:
    malloc_tuning.restart_with_huge_pages(environ, execve)
  xla_cpu_flags.apply(environ)
  if malloc:
    malloc_tuning.apply(environ)
  return True
