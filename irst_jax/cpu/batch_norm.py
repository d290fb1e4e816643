"""Train-mode BatchNorm in the form XLA:CPU runs fastest: channel sums in two stages and a
one-pass custom gradient.

:func:`normalize_with_batch_statistics` has the arguments and results of the plain
`irst_jax.models.layers._normalize_with_batch_statistics`, which it replaces on CPU only
(`irst_jax.cpu.form`). Measurements and commands: docs/performance.md.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp


def channel_sums(*arrays: jax.Array) -> jax.Array:
  """Sums over every axis but the last: ``k`` arrays ``[..., C]`` (NHWC activations, one
  shape) -> ``[k, C]`` in their dtype.

  Sums 32 consecutive pixels first, then the partial sums (an optimisation barrier keeps XLA
  from merging the two into one reduction, which XLA:CPU rewrites into slow windowed
  reductions). Falls back to one reduction when the pixel count is not a multiple of 32.
  """
  channels = arrays[0].shape[-1]
  if arrays[0].size // channels % 32:
    return jnp.stack([jnp.sum(a.reshape(-1, channels), axis=0) for a in arrays])
  partial = jax.lax.optimization_barrier(
      [jnp.sum(a.reshape(-1, 32, channels), axis=1) for a in arrays])
  return jnp.stack([jnp.sum(p, axis=0) for p in partial])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize_with_batch_statistics(x: jax.Array, scale: jax.Array, bias: jax.Array,
                                    epsilon: float, axis_name: Optional[str]):
  """Train-mode BatchNorm of NHWC `x` [N, H, W, C] with batch statistics over N, H, W.

  Returns (y [N, H, W, C], mean [C], var [C]); var is the biased variance E[x^2] - E[x]^2
  clipped at 0, both averaged over `axis_name` (pmean) when given. mean and var are outputs
  for the running statistics only: their cotangents are ignored. The gradient is one
  two-output reduction and one elementwise pass (autodiff reads the activations about ten
  times).
  """
  return _forward(x, scale, bias, epsilon, axis_name)[0]


def _forward(x, scale, bias, epsilon, axis_name):
  moments = channel_sums(x, jnp.square(x)) / (x.size // x.shape[-1])
  if axis_name is not None:
    moments = jax.lax.pmean(moments, axis_name)
  mean, mean2 = moments[0], moments[1]
  var = jnp.maximum(0.0, mean2 - jnp.square(mean))
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (rstd * scale) + bias
  return (y, mean, var), (x, scale, mean, rstd, mean2 - jnp.square(mean) > 0)


def _backward(epsilon, axis_name, residuals, cotangents):
  del epsilon
  x, scale, mean, rstd, var_positive = residuals
  g = cotangents[0]
  centred_sums = channel_sums(g, g * (x - mean))
  dbias, dscale = centred_sums[0], centred_sums[1] * rstd   # this device's share, as autodiff
  count = x.shape[0] * x.shape[1] * x.shape[2]
  if axis_name is not None:
    centred_sums = jax.lax.psum(centred_sums, axis_name)
    count = count * jax.lax.psum(1, axis_name)
  a = rstd * scale
  # dx = a (g - sum g / M - xhat sum(g xhat) / M), xhat = (x - mean) rstd; no variance term
  # where the clipped variance is constant (0).
  k = jnp.where(var_positive, -a * rstd * rstd * centred_sums[1] / count, 0.0)
  c = -a * centred_sums[0] / count
  dx = a * g + k * (x - mean) + c
  return dx, dscale, dbias


normalize_with_batch_statistics.defvjp(_forward, _backward)
