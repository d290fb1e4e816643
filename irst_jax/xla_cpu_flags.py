"""XLA CPU settings under which irst_jax's networks train and infer fastest.

XLA's CPU backend (jaxlib 0.10) hands convolutions to YNNPACK by default. For the narrow
(8-64 channel) convolutions of IRSTD networks, XNNPACK runs them faster, and above all their
weight gradients, which YNNPACK computes as a whole-image-window convolution behind two
transposes of the activations; DNA-Net's train step also needs less memory with XNNPACK.
XLA's concurrency-optimised scheduler (off by default) orders the step's ops so that
independent ones can run at the same time on the CPU's threads. Measurements and commands:
docs/performance.md.

:func:`apply` adds :data:`FLAGS` to the ``XLA_FLAGS`` environment variable, which XLA reads
when JAX creates its CPU backend (the first array or computation). Command-line entry points
call it, on the CPU backend only, through `irst_jax.platform_settings`; ``import irst_jax``
does not. A flag the user already set in ``XLA_FLAGS`` is left as it is. The flags are
experimental XLA options, and XLA aborts on flags it does not know, so they are added only
for the jaxlib series they were measured on (:data:`JAXLIB_SERIES`). Set
``IRST_JAX_XLA_CPU_FLAGS=0`` to leave ``XLA_FLAGS`` untouched.
"""
from __future__ import annotations

import os
from importlib import metadata
from typing import MutableMapping

__all__ = ["FLAGS", "JAXLIB_SERIES", "apply"]

_FUSION = "LIBRARY_FUSION_TYPE_"
FLAGS = (
    # Convolutions, dots and the elementwise ops around them through XNNPACK ...
    f"--xla_cpu_experimental_xnn_fusion_type={_FUSION}INDIVIDUAL_CONVOLUTION,"
    f"{_FUSION}INDIVIDUAL_DOT,{_FUSION}ELTWISE",
    # ... and none through YNNPACK, which would otherwise claim them first.
    "--xla_cpu_experimental_ynn_fusion_type=",
    # Schedule independent ops so that the thunk executor can run them side by side.
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
)
JAXLIB_SERIES = ((0, 10),)   # (major, minor) versions of jaxlib on which FLAGS were measured


def _jaxlib_series() -> tuple[int, int] | None:
  try:
    major, minor = metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)
  except (metadata.PackageNotFoundError, ValueError):
    return None


def apply(environ: MutableMapping[str, str] = os.environ) -> list[str]:
  """Appends the missing :data:`FLAGS` to ``environ['XLA_FLAGS']``.

  Does nothing when ``IRST_JAX_XLA_CPU_FLAGS=0`` or when jaxlib is not of a series in
  :data:`JAXLIB_SERIES`. Returns the flags added.
  """
  if environ.get("IRST_JAX_XLA_CPU_FLAGS", "1") == "0" or _jaxlib_series() not in JAXLIB_SERIES:
    return []
  current = environ.get("XLA_FLAGS", "")
  present = {token.split("=")[0] for token in current.split()}
  added = [flag for flag in FLAGS if flag.split("=")[0] not in present]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
