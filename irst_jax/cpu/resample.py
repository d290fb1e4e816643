"""Linear resampling along one axis with a gradient XLA:CPU runs fast: gathers of the few
outputs each input fed, of a materialised cotangent, instead of autodiff's scatter-add.

:func:`linear` has the arguments and results of the plain
`irst_jax.models.layers._linear` (two-tap gathers), which it replaces on CPU only
(`irst_jax.cpu.form`). Measurements and commands: docs/performance.md.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from irst_jax.cpu import convolution


def gathered_sum(x: jax.Array, axis: int, indices, weights):
  """``sum_k weights[:, k] * take(x, indices[:, k], axis)`` (slices of whole rows; `indices`,
  `weights` [out_size, taps]); also the plain layer's form (`models.layers.resize_bilinear`)."""
  shape = [1] * x.ndim
  shape[axis] = indices.shape[0]
  out = 0.0
  for k in range(indices.shape[1]):
    out = out + jnp.take(x, indices[:, k], axis=axis, mode="clip") * jnp.asarray(
        weights[:, k].reshape(shape), x.dtype)
  return out


def interpolation_matrix(lo, hi, frac, in_size: int) -> np.ndarray:
  """The [out_size, in_size] float32 matrix of 1-D linear resampling with taps ``lo``, ``hi``
  and weights ``1 - frac``, ``frac`` [out_size] (numpy): row i holds the weights of output i."""
  out_size = len(lo)
  matrix = np.zeros((out_size, in_size), np.float32)
  np.add.at(matrix, (np.arange(out_size), lo), 1.0 - np.asarray(frac, np.float32))
  np.add.at(matrix, (np.arange(out_size), hi), np.asarray(frac, np.float32))
  return matrix


def matmul_linear(x: jax.Array, axis: int, lo, hi, frac) -> jax.Array:
  """:func:`linear` of NHWC `x` (`axis` 1 or 2, static numpy taps) as a product with its
  :func:`interpolation_matrix`, written on the NCHW view: ``M @ x`` along H and ``x @ M.T``
  along W, each one broadcasting ONNX MatMul. The portable form of the layer for ONNX export:
  gathers along an NHWC axis reach the graph between layout transposes that ONNX Runtime does
  not remove (experiments/results/benchmark_deploy.md). Same values up to float32 rounding
  (each output sums the same two products, plus exact zeros)."""
  matrix = jnp.asarray(interpolation_matrix(lo, hi, frac, x.shape[axis]), x.dtype)
  nchw = x.transpose(0, 3, 1, 2)
  nchw = jnp.matmul(matrix, nchw) if axis == 1 else jnp.matmul(nchw, matrix.T)
  return nchw.transpose(0, 2, 3, 1)


def _transposed_taps(lo, hi, frac, in_size: int):
  """``(src_t, w_t)`` [in_size, width]: input j receives ``sum_k w_t[j, k] dy[src_t[j, k]]``
  from the outputs that read it (a contiguous range, since ``lo`` is monotone), padded with
  weight 0."""
  out_size = lo.shape[0]
  dense = np.zeros((in_size, out_size), np.float32)   # dense[j, i]: weight of x[j] in y[i]
  np.add.at(dense, (lo, np.arange(out_size)), 1.0 - frac)
  np.add.at(dense, (hi, np.arange(out_size)), frac)
  first = np.where(dense.any(1), (dense != 0).argmax(1), 0)
  last = np.where(dense.any(1), out_size - 1 - (dense[:, ::-1] != 0).argmax(1), -1)
  width = max(int((last - first).max()) + 1, 1)
  src_t = np.minimum(first[:, None] + np.arange(width), out_size - 1)
  w_t = np.where(first[:, None] + np.arange(width) <= last[:, None],
                 np.take_along_axis(dense, src_t, 1), 0.0).astype(np.float32)
  return src_t, w_t


def linear(x: jax.Array, axis: int, lo: np.ndarray, hi: np.ndarray, frac: np.ndarray) -> jax.Array:
  """``y = (1 - frac) take(x, lo) + frac take(x, hi)`` along ``axis``, for static numpy taps
  ``lo``, ``hi`` (int) and ``frac`` (float32) of one length, the output size along ``axis``.
  The gradient gathers, for each input, the outputs it fed, from the materialised cotangent
  (XLA would otherwise recompute the loss gradient inside each gather)."""
  lo, hi, frac = np.asarray(lo), np.asarray(hi), np.asarray(frac, np.float32)
  src_t, w_t = _transposed_taps(lo, hi, frac, x.shape[axis])
  indices, weights = np.stack([lo, hi], 1), np.stack([1.0 - frac, frac], 1)

  @jax.custom_vjp
  def resample(x):
    return gathered_sum(x, axis, indices, weights)

  resample.defvjp(lambda x: (gathered_sum(x, axis, indices, weights), None),
                  lambda _, g: (gathered_sum(convolution.materialise(g), axis, src_t, w_t),))
  return resample(x)
