"""The XLA:CPU forms of a few layers, swapped in where the computation runs on CPU.

Each form computes the values and gradients of a plain layer of `irst_jax.models.layers`
(bitwise, or up to float32 summation order; tested) in a form that XLA's CPU backend runs
faster. :func:`form` puts it in place with `jax.lax.platform_dependent`, so the choice is made
when the program is lowered for a platform: a program compiled for CPU holds the CPU form
only, one compiled for a GPU the plain form only, and one `jax.export` for several platforms
carries both, each used on its own platform. Measurements: docs/performance.md.

  convolution   materialised operands, narrow outputs padded, stride-2 sub-pixel gradients,
                strided 1x1 as subsampling, space-to-depth stem, shifted sums for a
                convolution to one feature, sub-pixel transposed convolution
  batch_norm    train-mode BatchNorm: two-stage channel sums, one-pass custom gradient
  pooling       max pools without reduce-window or select-and-scatter
  resample      linear resampling with a gathered, not scattered, gradient

A layer may also name a portable form (``form(..., portable=f)``): its forward values in
operations that ONNX converters and runtimes express exactly (-inf padding and unpadded pools,
reshapes, plain convolutions), traced within :func:`portable_forms` by the ONNX export
(`irst_jax.serving.onnx_export`) instead of the plain form.

Importing this package changes nothing in the process; the CPU process settings (XLA flags,
malloc) are `irst_jax.platform_settings`, applied by the command-line entry points.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Optional, TypeVar

import jax

from irst_jax.cpu import batch_norm, convolution, pooling, resample

__all__ = ["batch_norm", "convolution", "form", "plain_forms", "pooling", "portable_forms",
           "resample"]

#: What a function marked with `form` traces: "dispatch" (platform_dependent), "plain" or
#: "portable" (its portable form where it has one, else its plain form).
_mode = "dispatch"

_F = TypeVar("_F", bound=Callable)


def form(cpu_form: Optional[Callable], portable: Optional[Callable] = None
         ) -> Callable[[_F], _F]:
  """Decorator: the decorated (plain) function, computed as ``cpu_form`` (same arguments and
  results) where the program runs on CPU (``cpu_form=None``: the plain function everywhere,
  the portable form only within :func:`portable_forms`).

  The returned function calls ``jax.lax.platform_dependent(cpu=cpu_form, default=plain)`` on
  the call's arguments (arrays and static values alike, closed over); both forms are traced,
  only the one of the lowering platform is compiled. It keeps the plain function as
  ``.plain``, the CPU form as ``.cpu_form`` and the portable form (``portable``, or the plain
  function when None; same arguments and forward values) as ``.portable``.
  """
  def decorate(plain: _F) -> _F:
    portable_form = plain if portable is None else portable

    @functools.wraps(plain)
    def dispatch(*args, **kwargs):
      if _mode == "portable":
        return portable_form(*args, **kwargs)
      if _mode == "plain" or cpu_form is None:
        return plain(*args, **kwargs)
      return jax.lax.platform_dependent(cpu=lambda: cpu_form(*args, **kwargs),
                                        default=lambda: plain(*args, **kwargs))
    dispatch.plain, dispatch.cpu_form, dispatch.portable = plain, cpu_form, portable_form
    return dispatch
  return decorate


@contextlib.contextmanager
def plain_forms() -> Iterator[None]:
  """Within the block, functions marked with :func:`form` trace their plain form on every
  platform, CPU included (for counting a network's own operations: irst_jax.serving.profile).
  Affects tracing only: call a fresh `jax.jit` inside the block."""
  with _forms("plain"):
    yield


@contextlib.contextmanager
def portable_forms() -> Iterator[None]:
  """Within the block, functions marked with :func:`form` trace their portable form (their
  plain form where they name none) on every platform: the forward pass in operations an ONNX
  converter expresses exactly (irst_jax.serving.onnx_export). Forward values only (no custom
  gradients); affects tracing only."""
  with _forms("portable"):
    yield


@contextlib.contextmanager
def _forms(mode: str) -> Iterator[None]:
  global _mode
  previous, _mode = _mode, mode
  try:
    yield
  finally:
    _mode = previous
