"""Shared building blocks of every network: normalisation, conv-BN-ReLU, residual blocks,
resampling and segmentation heads.

Layout is NHWC everywhere. BatchNorm follows PyTorch's semantics (momentum 0.1, i.e. Flax
momentum 0.9; eps 1e-5) because the reference implementations are PyTorch/MXNet; when the
model runs inside `jax.pmap` with `axis_name` set, batch statistics are averaged over the
devices (synchronised BatchNorm).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irst_jax.models import cpu_convolution
from irst_jax.models.cpu_convolution import Conv, conv_general_dilated

ModuleDef = Any

# He (Kaiming) normal initialisation, fan-in, as used by the ACM paper (Sec. 5, "the strategy
# described by He et al. [13]").
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                      axis_name: Optional[str]):
  """Train-mode BatchNorm of NHWC `x` [N, H, W, C] with batch statistics over N, H, W.

  Returns (y [N, H, W, C], mean [C], var [C]); var is the biased variance E[x^2] - E[x]^2
  clipped at 0 (flax.linen.BatchNorm's `use_fast_variance`), both averaged over `axis_name`
  (pmean) when given. mean and var are outputs for the running statistics only: their
  cotangents are ignored (stop_gradient semantics), as they are never differentiated.
  """
  return _batch_norm_fwd(x, scale, bias, epsilon, axis_name)[0]


def channel_sums(*arrays: jax.Array) -> jax.Array:
  """Sums over every axis but the last: ``k`` arrays ``[..., C]`` (NHWC activations, one
  shape) -> ``[k, C]`` in their dtype.

  Sums 32 consecutive pixels first, then the partial sums (an optimisation barrier keeps XLA
  from merging the two into one reduction). XLA:CPU reduces a whole NHWC activation to its
  channels through a tree-reduction rewrite into windowed reductions, 5-10x slower than
  this at the shapes of the networks' BatchNorms (8x256x256x8 to 8x32x32x64: 3.5 -> 0.5 ms
  and 0.9 -> 0.15 ms for a mean and a mean square; experiments/results/benchmark_acm_unet.md).
  Falls back to one reduction when the pixel count is not a multiple of 32.
  """
  channels = arrays[0].shape[-1]
  if arrays[0].size // channels % 32:
    return jnp.stack([jnp.sum(a.reshape(-1, channels), axis=0) for a in arrays])
  partial = jax.lax.optimization_barrier(
      [jnp.sum(a.reshape(-1, 32, channels), axis=1) for a in arrays])
  return jnp.stack([jnp.sum(p, axis=0) for p in partial])


def _batch_norm_fwd(x, scale, bias, epsilon, axis_name):
  moments = channel_sums(x, jnp.square(x)) / (x.size // x.shape[-1])
  if axis_name is not None:
    moments = jax.lax.pmean(moments, axis_name)
  mean, mean2 = moments[0], moments[1]
  var = jnp.maximum(0.0, mean2 - jnp.square(mean))
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (rstd * scale) + bias
  return (y, mean, var), (x, scale, mean, rstd, mean2 - jnp.square(mean) > 0)


def _batch_norm_bwd(epsilon, axis_name, residuals, cotangents):
  """One fused reduction pass (sum g, sum g (x - mean)) and one elementwise pass for dx."""
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


_batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
  """Drop-in for `flax.linen.BatchNorm` on NHWC input (feature axis -1, scale and bias).

  Same variables (params `scale`, `bias`; batch_stats `mean`, `var`), the same statistics
  (biased variance E[x^2] - E[x]^2, pmean over `axis_name`), the same running-average update
  `momentum * old + (1 - momentum) * new` (not during init) and the same output, except that
  with `unbiased_running_var=True` the running variance is updated with the unbiased batch
  variance n / (n - 1) * var, n = elements per channel of the global batch, as
  `torch.nn.BatchNorm2d` does (normalisation itself always uses the biased one). In training
  mode the gradient is a custom VJP: XLA's autodiff of flax's formulation materialises x - mean
  and g * scale * rstd and reads the tensors about ten times; this one needs one
  two-output reduction and one elementwise pass (layers benchmark in
  experiments/results/benchmark_acm_unet.md).
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
      return (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
    axis_name = None if self.is_initializing() else self.axis_name
    y, mean, var = _batch_norm_train(x, scale, bias, self.epsilon, axis_name)
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


def conv(features: int, kernel: int = 3, strides: int = 1, use_bias: bool = False,
         dilation: int = 1, name: Optional[str] = None) -> Conv:
  """A k x k convolution with PyTorch-style symmetric padding (k // 2 * dilation)."""
  pad = kernel // 2 * dilation
  return Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
                 use_bias=use_bias, kernel_init=he_normal, name=name)


def _conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  pad = kernel.shape[0] // 2
  return conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def conv_to_one_channel(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'Same' k x k convolution (stride 1, zero padding k // 2, odd k, no bias) of NHWC
  ``x`` [N, H, W, C] with an HWIO ``kernel`` [k, k, C, 1] -> [N, H, W, 1], for few input
  channels (CBAM's 7x7 convolution of the [mean, max] maps).

  The forward pass is written as k * k * C shifted multiply-adds of the zero-padded channel
  planes, which XLA fuses into one pass over them: XLA:CPU's convolution libraries run this
  2 -> 1 channel shape about 20x slower (experiments/results/benchmark_vs_torch_dnanet.md).
  The gradient is the ordinary
  convolution's (autodiff of the shifted sums would be slower still). Equal to
  `lax.conv_general_dilated` up to float32 summation order (~1e-6 relative; tested).
  """
  k, c = kernel.shape[0], x.shape[-1]
  n, h, w = x.shape[:3]
  pad = k // 2
  out = jnp.zeros((n, h, w), jnp.result_type(x, kernel))
  for ci in range(c):
    plane = jnp.pad(x[..., ci], ((0, 0), (pad, pad), (pad, pad)))
    for dy in range(k):
      for dx in range(k):
        out = out + plane[:, dy:dy + h, dx:dx + w] * kernel[dy, dx, ci, 0]
  return out[..., None]


conv_to_one_channel.defvjp(
    lambda x, kernel: (conv_to_one_channel(x, kernel), (x, kernel)),
    lambda residuals, g: jax.vjp(_conv_same, *residuals)[1](g))


class ConvToOneChannel(nn.Module):
  """`conv_to_one_channel` as a module: the variables of `flax.linen.Conv(1, (k, k),
  use_bias=False)` (param ``kernel`` [k, k, C, 1], same initialisation), so checkpoints and
  the PyTorch converter see no difference."""
  kernel_size: int = 7
  kernel_init: nn.initializers.Initializer = he_normal

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kernel_size % 2 != 1:
      raise ValueError(f"kernel_size must be odd for 'same' padding, got {self.kernel_size}")
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size, x.shape[-1], 1), jnp.float32)
    return conv_to_one_channel(x, kernel)


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(3, stride=2, padding=1)` on NHWC input (padding never wins).

  [N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C]. The forward pass is the maximum of the nine
  strided window taps, one elementwise fusion (XLA:CPU's reduce-window took 4.3 ms at
  8x128x128x16). The gradient goes to the first maximum of each window in raster order, as
  PyTorch's: the forward pass keeps that tap's index (uint8), and the backward pass writes
  each of the four (row, column) parity planes of the input gradient from at most four
  shifted, masked copies of the output gradient, then interleaves them (XLA's
  select-and-scatter is about 4x slower on CPU, and nine dilated pads wrote nine
  input-sized arrays).
  """
  return _max_pool_fwd(x)[0]


def _pool_taps(x):
  _, h, w, _ = x.shape
  ho, wo = -(-h // 2), -(-w // 2)
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  n, _, _, c = padded.shape
  # lax.slice, not strided indexing: the same slice for static shapes, and a slice rather
  # than a gather for jax.export's symbolic ones (the exported detector takes any H, W).
  return [jax.lax.slice(padded, (0, dy, dx, 0), (n, dy + 2 * ho - 1, dx + 2 * wo - 1, c),
                        (1, 2, 2, 1))
          for dy in range(3) for dx in range(3)]


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
  """PyTorch `MaxPool2d(2, 2)` on NHWC input [N, H, W, C] -> [N, H // 2, W // 2, C].

  Written as a reshape and a max over the 2 x 2 windows (odd trailing rows/columns dropped, as
  PyTorch's floor mode): the same forward values, and a gradient that avoids XLA's slow
  select-and-scatter on CPU. Ties within a window share the gradient (PyTorch: the first
  wins); ties are in practice the zeros after a ReLU, whose gradient the ReLU stops anyway.
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :]
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


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


# Sub-pixel form of a stride-2, kernel-4, padding-1 transposed convolution. Per axis,
# out[2i] = x[i-1] w[3] + x[i] w[1] and out[2i+1] = x[i] w[2] + x[i+1] w[0]: phase a of the
# output is a 3-tap convolution over x[i-1], x[i], x[i+1] with taps _PHASE_TAPS[a, tap, k].
_PHASE_TAPS = np.zeros((2, 3, 4), np.float32)
_PHASE_TAPS[0, 0, 3] = _PHASE_TAPS[0, 1, 1] = _PHASE_TAPS[1, 1, 2] = _PHASE_TAPS[1, 2, 0] = 1.0


class ConvTranspose4x4(nn.Module):
  """PyTorch `ConvTranspose2d(C_in, features, kernel_size=4, stride=2, padding=1)`: x2 upsampling.

  NHWC [N, H, W, C_in] -> [N, 2H, 2W, features]. Parameters: `kernel` (4, 4, C_in, features)
  with kernel[ky, kx, i, o] = torch_weight[i, o, ky, kx], and `bias` (features,).

  Computed exactly, in sub-pixel form: one 3x3 convolution to 4 * features channels (the four
  output phases) followed by depth-to-space. XLA on CPU runs the gradient of this form
  several times faster than a dilated-input transposed convolution.
  """
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c_in = x.shape[-1]
    kernel = self.param("kernel", he_normal, (4, 4, c_in, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    taps = jnp.asarray(_PHASE_TAPS, x.dtype)
    phases = jnp.einsum("ayk,bxl,klio->yxiabo", taps, taps, kernel)
    phases = phases.reshape(3, 3, c_in, 4 * self.features)
    y = conv_general_dilated(x, phases, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return cpu_convolution.depth_to_space(y) + bias


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


@functools.lru_cache(maxsize=None)
def _two_tap_tables(in_size: int, out_size: int, align_corners: bool):
  """Static tables of 1-D bilinear resampling ``in_size -> out_size`` (PyTorch's formulas).

  Forward: ``y[i] = (1 - f[i]) x[lo[i]] + f[i] x[hi[i]]`` with the taps of `_source_taps`
  (computed in float64).
  Transpose (for the gradient): ``dx[j] = sum_k w[j, k] dy[src[j, k]]`` over the outputs
  that read input ``j`` (a contiguous range, since ``lo`` is monotone), padded with weight 0.
  """
  lo, hi, frac = _source_taps(np, in_size, out_size, align_corners, np.float64)
  frac = frac.astype(np.float32)
  dense = np.zeros((in_size, out_size), np.float32)   # dense[j, i]: weight of x[j] in y[i]
  np.add.at(dense, (lo, np.arange(out_size)), 1.0 - frac)
  np.add.at(dense, (hi, np.arange(out_size)), frac)
  first = np.where(dense.any(1), (dense != 0).argmax(1), 0)
  last = np.where(dense.any(1), out_size - 1 - (dense[:, ::-1] != 0).argmax(1), -1)
  width = max(int((last - first).max()) + 1, 1)
  src_t = np.minimum(first[:, None] + np.arange(width), out_size - 1)
  w_t = np.where(first[:, None] + np.arange(width) <= last[:, None],
                 np.take_along_axis(dense, src_t, 1), 0.0).astype(np.float32)
  return lo, hi, frac, src_t, w_t


def _weighted_taps(x: jax.Array, axis: int, indices, weights):
  """``sum_k weights[:, k] * take(x, indices[:, k], axis)`` (slices of whole rows: fast)."""
  shape = [1] * x.ndim
  shape[axis] = indices.shape[0]
  out = 0.0
  for k in range(indices.shape[1]):
    out = out + jnp.take(x, indices[:, k], axis=axis, mode="clip") * jnp.asarray(
        weights[:, k].reshape(shape), x.dtype)
  return out


@functools.lru_cache(maxsize=None)
def _resampler(axis: int, in_size: int, out_size: int, align_corners: bool):
  """Linear 1-D resampling along `axis` with a custom VJP: the forward reads two taps per
  output and the gradient gathers the few outputs each input fed (both are gathers of
  contiguous slices; autodiff's scatter-add is ~10x slower on CPU, the dense interpolation
  matrix O(size) times the work). The cotangent is materialised first
  (`cpu_convolution.materialise`):
  otherwise XLA recomputes the loss gradient inside each of the gathers (ACM-U-Net's
  64 -> 256 head upsampling: 16 gathers, 7.6 -> 0.1 ms a train step)."""
  lo, hi, frac, src_t, w_t = _two_tap_tables(in_size, out_size, align_corners)
  forward = functools.partial(_weighted_taps, axis=axis, indices=np.stack([lo, hi], 1),
                              weights=np.stack([1.0 - frac, frac], 1))
  transpose = functools.partial(_weighted_taps, axis=axis, indices=src_t, weights=w_t)

  @jax.custom_vjp
  def resample(x):
    return forward(x)

  resample.defvjp(lambda x: (forward(x), None),
                  lambda _, g: (transpose(cpu_convolution.materialise(g)),))
  return resample


def resize_bilinear(x: jax.Array, size: Sequence[int], align_corners: bool = False) -> jax.Array:
  """Bilinear resize of NHWC `x` [N, H, W, C] to spatial `size` = (H', W'), no antialiasing.

  `align_corners=False`: half-pixel centres, source (i + 1/2) H / H' - 1/2 clamped at 0,
  equal to PyTorch `F.interpolate(mode='bilinear', align_corners=False)` (ACM's head and
  FPN; for upsampling also to `jax.image.resize(..., 'bilinear')`).
  `align_corners=True`: corner pixels of input and output coincide, source coordinate
  i * (H - 1) / (H' - 1), equal to PyTorch's `align_corners=True` (used throughout DNA-Net);
  `jax.image.resize` has no such mode.
  Computed separably as two-tap gathers with a custom VJP (`_resampler`), which on CPU is
  5-30x faster forward than interpolation matrices (experiments/results/benchmark_dnanet.md).
  Sizes that are `jax.export` symbolic dimensions (export with any H, W) take the same taps
  traced in jnp (`_symbolic_resample`; forward only).
  """
  _, h, w, _ = x.shape
  for axis, (n_in, n_out) in ((1, (h, size[0])), (2, (w, size[1]))):
    if jax.export.is_symbolic_dim(n_in) or jax.export.is_symbolic_dim(n_out):
      x = _symbolic_resample(x, axis, n_in, n_out, bool(align_corners))
    elif n_in != n_out:
      x = _resampler(axis, n_in, int(n_out), bool(align_corners))(x)
  return x


def _symbolic_resample(x: jax.Array, axis: int, in_size, out_size, align_corners: bool):
  """The forward of `_resampler` with its taps traced in float32 (as PyTorch computes them),
  for sizes that are `jax.export` symbolic dimensions (the exported detector takes any H, W,
  so the static tables cannot be built). Equal sizes give the identity (source i -> i)."""
  lo, hi, frac = _source_taps(jnp, in_size, out_size, align_corners, jnp.float32)
  return _weighted_taps(x, axis, jnp.stack([lo, hi], 1), jnp.stack([1.0 - frac, frac], 1))


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

