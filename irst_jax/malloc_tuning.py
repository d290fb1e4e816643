"""glibc malloc settings for long CPU runs: freed memory is kept for reuse, not returned.

XLA:CPU allocates each executable's temporary buffer (for a train step, every activation
kept for the backward pass) at every call. glibc serves blocks that large with fresh
``mmap``'d pages and unmaps them on free, so every step page-faults its whole working set
again. With ``mmap`` disabled, trimming off and one arena (threads from other arenas would
otherwise still ``mmap`` large blocks), freed blocks stay in the heap and the next step reuses
them. The cost: the process's resident memory stays at its peak. Measurements and commands:
docs/performance.md.

:func:`apply` changes the allocator of the whole process, so only command-line entry points
call it, on the CPU backend (`irst_jax.platform_settings`), never ``import irst_jax``. It acts
on Linux with glibc only; ``IRST_JAX_MALLOC_TUNING=0`` turns it off. The equivalent
environment setting, for other programs, is
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:glibc.malloc.arena_max=1``.

Transparent huge pages for the heap. Where the kernel gives huge pages only to memory that
asks for them (``/sys/kernel/mm/transparent_hugepage/enabled`` = ``madvise``, the common
default), glibc asks for its heap only when started with the tunable ``glibc.malloc.hugetlb=1``;
``mallopt`` cannot set it. :func:`restart_with_huge_pages` therefore restarts the program
once with that tunable added; `irst_jax.main` (through `irst_jax.platform_settings`) and the
benchmarks call it first, on the CPU backend only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from typing import Callable, Mapping

__all__ = ["HUGE_PAGES_TUNABLE", "SETTINGS", "apply", "restart_with_huge_pages"]

# mallopt parameters of glibc's malloc.h and their values.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_ARENA_MAX, 1))
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def apply(environ: Mapping[str, str] = os.environ) -> bool:
  """Sets :data:`SETTINGS` with glibc's ``mallopt``; call it before JAX starts its threads.

  Returns True if every setting was accepted, False where it does not apply (not Linux, no
  glibc, or ``IRST_JAX_MALLOC_TUNING=0``).
  """
  if environ.get("IRST_JAX_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS)


def restart_with_huge_pages(environ: Mapping[str, str] = os.environ,
                            execve: Callable[..., None] = os.execve) -> None:
  """Replaces the running program by itself (same interpreter and command line,
  ``sys.executable`` and ``sys.orig_argv[1:]``) with :data:`HUGE_PAGES_TUNABLE` added to
  ``GLIBC_TUNABLES``.

  Call it first in a ``__main__`` block, before any work. Returns without restarting when the
  tunable (any ``glibc.malloc.hugetlb`` value) is already set, which is the case in the
  restarted program, on other platforms or C libraries, or with ``IRST_JAX_MALLOC_TUNING=0``.
  Raises OSError if the interpreter cannot be executed again (from ``os.execve``).
  """
  tunables = environ.get("GLIBC_TUNABLES", "")
  if (environ.get("IRST_JAX_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux")
      or platform.libc_ver()[0] != "glibc" or "glibc.malloc.hugetlb" in tunables):
    return
  tunables = ":".join(filter(None, [tunables, HUGE_PAGES_TUNABLE]))
  # argv[0] is the interpreter's full path: from a bare "python", Python would look itself up
  # on PATH and could find another installation.
  execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
         {**environ, "GLIBC_TUNABLES": tunables})
