"""Max pools in the forms XLA:CPU runs fastest: strided taps and masked shifts instead of
reduce-window and select-and-scatter.

Each function has the arguments and results of the plain max pool of
`irst_jax.models.layers` it replaces on CPU only (`irst_jax.cpu.form`). Measurements and
commands: docs/performance.md.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(3, stride=2, padding=1)` on NHWC input [N, H, W, C] ->
  [N, ceil(H/2), ceil(W/2), C]: the maximum of the nine strided window taps (one elementwise
  fusion). The gradient goes to the first maximum of each window in raster order, as
  PyTorch's: the forward pass keeps that tap's index (uint8), and the backward pass writes
  each of the four (row, column) parity planes of the input gradient from at most four
  shifted, masked copies of the output gradient, then interleaves them.
  """
  return _max_pool_fwd(x)[0]


def _pool_taps(x):
  _, h, w, _ = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1   # ceil(h / 2), written as the plain pool's size
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  n, _, _, c = padded.shape
  # lax.slice, not strided indexing: the same slice for static shapes, and a slice rather
  # than a gather for jax.export's symbolic ones (the exported detector takes any H, W).
  return [jax.lax.slice(padded, (0, dy, dx, 0), (n, dy + 2 * ho - 1, dx + 2 * wo - 1, c),
                        (1, 2, 2, 1))
          for dy in range(3) for dx in range(3)]


def max_pool_3x3_s2_padded(x: jax.Array) -> jax.Array:
  """:func:`max_pool_3x3_s2`'s values as the input padded with -inf and pooled without padding
  (`flax.linen.max_pool`, keywords): the portable form of the layer (jax2onnx's rule for
  explicit pool padding gives a wrong output shape). jax2onnx writes it as a Pad and a
  MaxPool; the export folds the Pad into the MaxPool's pads
  (`irst_jax.serving.onnx_export.fold_max_pool_padding`)."""
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")


def _max_pool_fwd(x):
  taps = _pool_taps(x)
  y = functools.reduce(jnp.maximum, taps)
  first = jnp.full(y.shape, 8, jnp.uint8)   # tap k = 3 * dy + dx of the first maximum
  for k in range(7, -1, -1):
    first = jnp.where(taps[k] == y, jnp.uint8(k), first)
  # An empty [H, W, 0] array carries the input size (H = 2 Ho or 2 Ho - 1) to the backward.
  return y, (jnp.zeros(x.shape[1:3] + (0,), x.dtype), first)


def _max_pool_bwd(residuals, g):
  shape_carrier, first = residuals
  h, w = shape_carrier.shape[:2]
  zero = jnp.zeros((), g.dtype)

  def at(k):
    return jnp.where(first == k, g, zero)

  def next_row(a):  # a[:, i + 1] (0 past the end)
    return jnp.pad(a[:, 1:], ((0, 0), (0, 1), (0, 0), (0, 0)))

  def next_col(a):
    return jnp.pad(a[:, :, 1:], ((0, 0), (0, 0), (0, 1), (0, 0)))

  # Input pixel (2a + p, 2b + q) is tap (p + 1, q + 1) of window (a, b) and, for odd p or
  # q, tap (0, .) or (., 0) of the next window down or right.
  even_even = at(4)
  even_odd = at(5) + next_col(at(3))
  odd_even = at(7) + next_row(at(1))
  odd_odd = at(8) + next_col(at(6)) + next_row(at(2)) + next_row(next_col(at(0)))
  n, ho, wo, c = g.shape
  dx = jnp.stack([jnp.stack([even_even, even_odd], axis=3),
                  jnp.stack([odd_even, odd_odd], axis=3)], axis=2)   # [N, Ho, 2, Wo, 2, C]
  return (dx.reshape(n, 2 * ho, 2 * wo, c)[:, :h, :w],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(2, 2)` on NHWC input [N, H, W, C] -> [N, H // 2, W // 2, C], as a
  reshape and a max over the 2 x 2 windows (odd trailing rows/columns dropped). Ties within a
  window share the gradient (the plain max pool's goes to one of them); ties are in practice
  the zeros after a ReLU, whose gradient the ReLU stops anyway.
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :]
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))
