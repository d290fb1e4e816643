"""Shared building blocks of every network: normalisation, conv-BN-ReLU, residual blocks,
resampling and segmentation heads.

Layout is NHWC everywhere. BatchNorm follows PyTorch's semantics (momentum 0.1, i.e. Flax
momentum 0.9; eps 1e-5) because the reference implementations are PyTorch/MXNet; when the
model runs inside `jax.pmap` with `axis_name` set, batch statistics are averaged over the
devices (synchronised BatchNorm).

Functions marked `@cpu.form(...)` are computed, where the program runs on CPU, by the form
named there (`irst_jax.cpu`: same values and gradients); the ONNX export traces their portable
forms (`irst_jax.cpu.portable_forms`: same forward values, in operations jax2onnx converts
exactly: the padded max pool as a -inf pad and an unpadded pool, inference BatchNorm as a
multiply-add).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irst_jax import cpu

ModuleDef = Any

# He (Kaiming) normal initialisation, fan-in, as used by the ACM paper (Sec. 5, "the strategy
# described by He et al. [13]").
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")

_NHWC = ("NHWC", "HWIO", "NHWC")


@cpu.form(cpu.batch_norm.normalize_with_batch_statistics)
def _normalize_with_batch_statistics(x: jax.Array, scale: jax.Array, bias: jax.Array,
                                     epsilon: float, axis_name: Optional[str]):
  """Train-mode BatchNorm of NHWC `x` [N, H, W, C] with batch statistics over N, H, W:
  (y [N, H, W, C], mean [C], var [C]), var the biased variance E[x^2] - E[x]^2 clipped at 0,
  both averaged over `axis_name` (pmean) when given (flax.linen.BatchNorm's
  `use_fast_variance`)."""
  moments = jnp.stack([jnp.mean(x, axis=(0, 1, 2)), jnp.mean(jnp.square(x), axis=(0, 1, 2))])
  if axis_name is not None:
    moments = jax.lax.pmean(moments, axis_name)
  mean, mean2 = moments[0], moments[1]
  var = jnp.maximum(0.0, mean2 - jnp.square(mean))
  y = (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
  return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)


def _affine_with_running_statistics(x, mean, var, scale, bias, epsilon):
  """`_normalize_with_running_statistics` as ``x * a + b``, ``a = rsqrt(var + eps) * scale``,
  ``b = bias - mean * a`` (computed once in numpy when the statistics are concrete, as in an
  export): the portable form, a multiply-add that ONNX Runtime and TensorRT fold into the
  preceding convolution. Equal up to float32 rounding (the mean is subtracted after scaling)."""
  if not any(isinstance(v, jax.core.Tracer) for v in (mean, var, scale, bias)):
    mean, var, scale, bias = (np.asarray(v, np.float32) for v in (mean, var, scale, bias))
    a = (scale / np.sqrt(var + np.float32(epsilon))).astype(np.float32)
    return x * a + (bias - mean * a).astype(np.float32)
  a = jax.lax.rsqrt(var + epsilon) * scale
  return x * a + (bias - mean * a)


@cpu.form(None, portable=_affine_with_running_statistics)
def _normalize_with_running_statistics(x, mean, var, scale, bias, epsilon):
  """Inference-mode BatchNorm of NHWC `x` [..., C] with running statistics [C]:
  ``(x - mean) * (rsqrt(var + eps) * scale) + bias`` (flax.linen.BatchNorm's)."""
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` on NHWC input (feature axis -1, scale and bias), with PyTorch's
  running variance as an option.

  Same variables (params `scale`, `bias`; batch_stats `mean`, `var`), the same statistics
  (biased variance E[x^2] - E[x]^2, pmean over `axis_name`), the same running-average update
  `momentum * old + (1 - momentum) * new` (not during init) and the same output, except that
  with `unbiased_running_var=True` the running variance is updated with the unbiased batch
  variance n / (n - 1) * var, n = elements per channel of the global batch, as
  `torch.nn.BatchNorm2d` does (normalisation itself always uses the biased one).
  """
  use_running_average: Optional[bool] = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  unbiased_running_var: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None) -> jax.Array:
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    if use_running_average:
      return _normalize_with_running_statistics(x, ra_mean.value, ra_var.value, scale, bias,
                                                self.epsilon)
    axis_name = None if self.is_initializing() else self.axis_name
    y, mean, var = _normalize_with_batch_statistics(x, scale, bias, self.epsilon, axis_name)
    if not self.is_initializing():
      if self.unbiased_running_var:
        n = x.size // x.shape[-1] * (jax.lax.psum(1, axis_name) if axis_name else 1)
        var = var * (n / max(n - 1, 1))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def batch_norm(train: bool, axis_name: Optional[str] = None) -> ModuleDef:
  """BatchNorm with PyTorch semantics (momentum 0.1, eps 1e-5, running variance updated with
  the unbiased batch variance): `BatchNorm` above.

  Args:
    train: use batch statistics (and update the running ones) when True.
    axis_name: the pmap axis over which batch statistics are averaged (synchronised
      BatchNorm), or None outside pmap.
  """
  return functools.partial(
      BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
      axis_name=axis_name if train else None, unbiased_running_var=True)


@cpu.form(cpu.convolution.conv_general_dilated)
def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides, padding,
                         **kwargs) -> jax.Array:
  """`jax.lax.conv_general_dilated` (same arguments, result and errors)."""
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


class Conv(nn.Conv):
  """`flax.linen.Conv` (same fields, variables and default names) computed with
  :func:`conv_general_dilated`."""
  conv_general_dilated: Any = conv_general_dilated


def conv(features: int, kernel: int = 3, strides: int = 1, use_bias: bool = False,
         dilation: int = 1, name: Optional[str] = None) -> Conv:
  """A k x k convolution with PyTorch-style symmetric padding (k // 2 * dilation)."""
  pad = kernel // 2 * dilation
  return Conv(features, (kernel, kernel), strides=(strides, strides),
              padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
              use_bias=use_bias, kernel_init=he_normal, name=name)


@cpu.form(cpu.pooling.max_pool_3x3_s2, portable=cpu.pooling.max_pool_3x3_s2_padded)
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(3, stride=2, padding=1)` on NHWC input (padding never wins):
  [N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C]."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


@cpu.form(cpu.pooling.max_pool_2x2)
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(2, 2)` on NHWC input [N, H, W, C] -> [N, H // 2, W // 2, C] (odd
  trailing rows/columns dropped, as PyTorch's floor mode). Keyword arguments: jax2onnx's
  rule for `flax.linen.max_pool` takes no others (also the portable form)."""
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class BasicBlock(nn.Module):
  """CIFAR/torchvision BasicBlock: 3x3 conv-BN-ReLU, 3x3 conv-BN, shortcut, ReLU after add.

  The shortcut is a 1x1 conv (stride `strides`, no bias) + BN when the shape changes.
  Input/output NHWC; output has `features` channels and spatial size / `strides`.
  Source: He et al. 2016; ACM reference code (ResidualBlock of the PyTorch port).
  """
  features: int
  strides: int = 1
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = conv(self.features, 3, self.strides, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = conv(self.features, 3, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = conv(self.features, 1, self.strides, name="shortcut_conv")(x)
      residual = self.norm(name="shortcut_bn")(residual)
    return nn.relu(y + residual)


class ResidualStage(nn.Module):
  """`num_blocks` BasicBlocks; the first one carries the stride (ResNet `_make_layer`)."""
  features: int
  num_blocks: int
  strides: int = 1
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_blocks):
      x = BasicBlock(self.features, self.strides if i == 0 else 1, self.norm,
                     name=f"block{i}")(x)
    return x


@cpu.form(cpu.convolution.conv_transpose_4x4_s2)
def conv_transpose_4x4_s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """PyTorch `ConvTranspose2d(kernel_size=4, stride=2, padding=1)` of NHWC `x` [N, H, W, I]
  with `kernel` [4, 4, I, O] (kernel[ky, kx, i, o] = torch_weight[i, o, ky, kx]), no bias ->
  [N, 2H, 2W, O]: the input dilated by 2, padded by 4 - 1 - 1 = 2, correlated with the
  spatially flipped kernel."""
  return jax.lax.conv_transpose(x, kernel[::-1, ::-1], (2, 2), ((2, 2), (2, 2)),
                                dimension_numbers=_NHWC)


class ConvTranspose4x4(nn.Module):
  """PyTorch `ConvTranspose2d(C_in, features, kernel_size=4, stride=2, padding=1)`: x2 upsampling.

  NHWC [N, H, W, C_in] -> [N, 2H, 2W, features]. Parameters: `kernel` (4, 4, C_in, features)
  with kernel[ky, kx, i, o] = torch_weight[i, o, ky, kx], and `bias` (features,).
  """
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", he_normal, (4, 4, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return conv_transpose_4x4_s2(x, kernel) + bias


def _source_taps(xp, in_size, out_size, align_corners: bool, dtype):
  """``(lo, hi, frac)`` [out_size] of 1-D bilinear resampling ``in_size -> out_size`` with
  PyTorch's source coordinate, computed with the array module ``xp`` (numpy for static
  sizes, jax.numpy for `jax.export` symbolic ones): ``i (in - 1) / max(out - 1, 1)``
  (``align_corners``) or ``max((i + 1/2) in / out - 1/2, 0)``, ``lo = floor``,
  ``hi = min(lo + 1, in - 1)``, ``frac = source - lo``."""
  i = xp.arange(out_size, dtype=dtype)
  n_in, n_out = xp.asarray(in_size, dtype), xp.asarray(out_size, dtype)
  if align_corners:
    src = i * ((n_in - 1.0) / xp.maximum(n_out - 1.0, 1.0))
  else:
    src = xp.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
  lo = xp.minimum(xp.floor(src).astype(xp.int32), in_size - 1)
  hi = xp.minimum(lo + 1, in_size - 1)
  return lo, hi, src - lo


@cpu.form(cpu.resample.linear, portable=cpu.resample.matmul_linear)
def _linear(x: jax.Array, axis: int, lo, hi, frac) -> jax.Array:
  """``(1 - frac) take(x, lo) + frac take(x, hi)`` along ``axis`` (taps of `_source_taps`)."""
  return cpu.resample.gathered_sum(x, axis, np.stack([lo, hi], 1), np.stack([1.0 - frac, frac], 1))


@functools.lru_cache(maxsize=None)
def _static_taps(in_size: int, out_size: int, align_corners: bool):
  """`_source_taps` of static sizes, computed in float64; frac rounded to float32."""
  lo, hi, frac = _source_taps(np, in_size, out_size, align_corners, np.float64)
  return lo, hi, frac.astype(np.float32)


def resize_bilinear(x: jax.Array, size: Sequence[int], align_corners: bool = False) -> jax.Array:
  """Bilinear resize of NHWC `x` [N, H, W, C] to spatial `size` = (H', W'), no antialiasing.

  `align_corners=False`: half-pixel centres, source (i + 1/2) H / H' - 1/2 clamped at 0,
  equal to PyTorch `F.interpolate(mode='bilinear', align_corners=False)` (ACM's head and
  FPN; for upsampling also to `jax.image.resize(..., 'bilinear')`).
  `align_corners=True`: corner pixels of input and output coincide, source coordinate
  i * (H - 1) / (H' - 1), equal to PyTorch's `align_corners=True` (used throughout DNA-Net);
  `jax.image.resize` has no such mode.
  Computed separably, each axis as two-tap gathers. Sizes that are `jax.export` symbolic
  dimensions (export with any H, W) take the same taps traced in float32, as PyTorch
  computes them.
  """
  _, h, w, _ = x.shape
  for axis, (n_in, n_out) in ((1, (h, size[0])), (2, (w, size[1]))):
    if jax.export.is_symbolic_dim(n_in) or jax.export.is_symbolic_dim(n_out):
      lo, hi, frac = _source_taps(jnp, n_in, n_out, bool(align_corners), jnp.float32)
      x = cpu.resample.gathered_sum(x, axis, jnp.stack([lo, hi], 1), jnp.stack([1.0 - frac, frac], 1))
    elif n_in != n_out:
      x = _linear(x, axis, *_static_taps(n_in, int(n_out), bool(align_corners)))
  return x


class FCNHead(nn.Module):
  """FCN head: conv3x3 to C/4 (no bias) - BN - ReLU - Dropout(p) - conv1x1 (bias) to `features`.

  Source: the `_FCNHead` of the ACM reference code (open-acm / BasicIRSTD port).
  Output: logits, NHWC [N, H, W, features].
  """
  features: int = 1
  dropout: float = 0.1
  norm: ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = conv(x.shape[-1] // 4, 3, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return Conv(self.features, (1, 1), kernel_init=he_normal, name="conv2")(y)


def count_params(params: Any) -> int:
  """Number of scalar parameters in a pytree."""
  return sum(int(jnp.size(p)) for p in jax.tree_util.tree_leaves(params))

