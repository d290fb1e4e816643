"""Convolutions in the forms XLA:CPU (jaxlib 0.10, XNNPACK; `irst_jax/xla_cpu_flags.py`) runs
fastest: `conv_general_dilated` and `Conv`, used by every network in place of
`jax.lax.conv_general_dilated` and `flax.linen.Conv`. Values are those of the plain
convolution (bitwise, or up to float32 summation order where a form is rewritten); other
backends get the plain convolution.

On the CPU backend:
1. The input, and in the backward pass the output cotangent, are *materialised*: computed
   once into a buffer of their own (:func:`materialise`). XLA:CPU computes a weight gradient
   from transposed copies of the input and output cotangent, and its fusion pass duplicates
   the elementwise chain producing each of them (BatchNorm, ReLU, residual adds: up to five
   activations deep, 16-30 operands) into the transposes, which then read all those
   activations with strided access: 8x slower than transposing one buffer (8x64x64x16: 1.3
   against 0.2 ms). ACM-U-Net trains faster with it (`experiments/benchmark_cpu_convolution.py
   --without=materialise`; experiments/results/benchmark_acm_unet.md).
2. Four forms that XNNPACK does not take, or takes slowly, are rewritten (NHWC/HWIO, no
   dilation, no groups):
   - a k x k (k > 1) convolution with 2-7 output features gets its kernel zero-padded to 8
     output features and its output sliced back: XLA otherwise runs it with its own, slower
     kernel. ACM's FCN head (8x64x64x16 -> 4, 3x3): forward 7.3 -> 3.7 ms, forward +
     gradients 11.9 -> 7.3 ms;
   - the forward pass of a 3x3, stride-2, padding-1 convolution of a single-channel input
     (the stem of a network on grey images) becomes a 2x2 convolution of its space-to-depth
     [N, H/2, W/2, 4] input. 8x256x256x1 -> 8: forward 7.9 -> 3.8 ms; -> 16: 8.4 -> 4.9 ms;
     -> 32: 9.9 -> 6.6 ms;
   - the input gradient of a 3x3, stride-2, padding-1 convolution with at most 16 input
     features is a 2x2 convolution of the output gradient to the four input phases, then
     depth-to-space (sub-pixel form), instead of XLA's convolution of the output gradient
     dilated with zeros. Input gradient, 8x256x256x1 -> 8: 7.6 -> 5.0 ms; 8x64x64x16 -> 32:
     4.5 -> 2.7 ms; 8x32x32x32 -> 64 would go 2.2 -> 2.4 ms, so wider inputs keep XLA's.
   - a strided 1x1 convolution without padding (ResNet shortcut) convolves the subsampled
     input `lhs[:, ::s, ::s]`; its gradients then need no dilated convolution. Gradients,
     stride 2: 8x64x64x16 -> 32 1.8 -> 0.9 ms; 8x32x32x32 -> 64 0.85 -> 0.59 ms.
   Whole-network effect (`experiments/benchmark_cpu_convolution.py --without=rewrites` or
   `--without=sub_pixel`): experiments/results/benchmark_acm_unet.md.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_NHWC = ("NHWC", "HWIO", "NHWC")
_MIN_XNNPACK_FEATURES = 8   # fewer output features: padded up to this many
_MAX_SUB_PIXEL_FEATURES = 16   # more input features: XLA's own stride-2 input gradient


def materialise(x: jax.Array) -> jax.Array:
  """`x + 0`, written as a reduction over a stacked zero plane: XLA's fusion pass treats a
  reduction as expensive and so computes it once, into one buffer, instead of duplicating it,
  and every elementwise op behind it, into each consumer. Same shape and values as `x`."""
  return jnp.sum(jnp.stack([x, jnp.zeros_like(x)]), axis=0)


@jax.custom_vjp
def _materialised_value(x):
  return materialise(x)


@jax.custom_vjp
def _materialised_cotangent(x):
  return x


_materialised_value.defvjp(lambda x: (materialise(x), None), lambda _, g: (g,))
_materialised_cotangent.defvjp(lambda x: (x, None), lambda _, g: (materialise(g),))


def _narrow_output_padded(lhs, rhs, strides, padding):
  """The convolution with its HWIO kernel padded to 8 output features, sliced back."""
  features = rhs.shape[3]
  if not 1 < features < _MIN_XNNPACK_FEATURES or rhs.shape[:2] == (1, 1):
    return None
  wide = jnp.pad(rhs, ((0, 0), (0, 0), (0, 0), (0, _MIN_XNNPACK_FEATURES - features)))
  out = jax.lax.conv_general_dilated(lhs, wide, strides, padding, dimension_numbers=_NHWC)
  return jax.lax.slice_in_dim(out, 0, features, axis=3)  # a slice also for symbolic shapes


def _strided_1x1_as_subsampled(lhs, rhs, strides, padding):
  """A strided 1x1 convolution without padding (a ResNet shortcut) as the stride-1 convolution
  of the subsampled input `lhs[:, ::s, ::s]`. Its gradients are then a plain 1x1 weight
  gradient and a zero-interleaving pad, where XLA's own are a window-dilated and an
  input-dilated convolution in its own kernel."""
  if (rhs.shape[:2] != (1, 1) or tuple(strides) == (1, 1)
      or any(tuple(p) != (0, 0) for p in padding)):
    return None
  subsampled = jax.lax.slice(lhs, (0, 0, 0, 0), lhs.shape, (1, strides[0], strides[1], 1))
  return _xnnpack_form(subsampled, rhs, (1, 1), ((0, 0), (0, 0)), dimension_numbers=_NHWC)


def _is_3x3_stride2_pad1(lhs, rhs, strides, padding):
  _, h, w, _ = lhs.shape
  return (rhs.shape[:2] == (3, 3) and tuple(strides) == (2, 2) and not h % 2 and not w % 2
          and [tuple(p) for p in padding] == [(1, 1), (1, 1)])


def _single_channel_stride2_as_space_to_depth(lhs, rhs, strides, padding):
  """3x3 / stride 2 / padding 1 on [N, H, W, 1] (H, W even): forward pass in space-to-depth
  form (`_space_to_depth_forward`), gradients as `_stride2_gradients`."""
  if lhs.shape[3] != 1 or not _is_3x3_stride2_pad1(lhs, rhs, strides, padding):
    return None
  return _stride2_conv_space_to_depth_forward(lhs, rhs)


def _stride2_with_sub_pixel_input_gradient(lhs, rhs, strides, padding):
  """3x3 / stride 2 / padding 1 (H, W even), at most 16 input features and at least 8 output
  features (fewer: `_narrow_output_padded`): the plain forward pass, gradients as
  `_stride2_gradients`. With 32 or more input features XLA's own input gradient was as fast
  or faster (8x32x32x32 -> 64: 2.2 against 2.4 ms)."""
  if (lhs.shape[3] > _MAX_SUB_PIXEL_FEATURES or rhs.shape[3] < _MIN_XNNPACK_FEATURES
      or not _is_3x3_stride2_pad1(lhs, rhs, strides, padding)):
    return None
  return _stride2_conv_sub_pixel_input_gradient(lhs, rhs)


def _stride2_conv(lhs, rhs):
  return jax.lax.conv_general_dilated(lhs, rhs, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_NHWC)


def _space_to_depth_forward(lhs, rhs):
  """`_stride2_conv` as a 2x2 / stride 1 convolution of the space-to-depth input
  [N, H/2, W/2, 4] with padding (1, 0): output row i reads input rows 2i-1, 2i, 2i+1, i.e.
  phase 1 of block i-1 and phases 0 and 1 of block i."""
  n, h, w, _ = lhs.shape
  blocks = lhs.reshape(n, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4).reshape(
      n, h // 2, w // 2, 4)
  # Kernel taps 0, 1, 2 sit at block offsets (-1, phase 1), (0, phase 0), (0, phase 1).
  taps = jnp.pad(rhs[:, :, 0, :], ((1, 0), (1, 0), (0, 0)))       # [4, 4, O], tap t -> t + 1
  kernel = taps.reshape(2, 2, 2, 2, -1).transpose(0, 2, 1, 3, 4).reshape(2, 2, 4, -1)
  return _xnnpack_form(blocks, kernel, (1, 1), ((1, 0), (1, 0)), dimension_numbers=_NHWC)


def depth_to_space(phases: jax.Array) -> jax.Array:
  """[N, h, w, 4 C] with channels ordered (row phase, column phase, C) -> [N, 2h, 2w, C]:
  output pixel (2i + r, 2j + c) is channel block (r, c) of input pixel (i, j). The output of
  a sub-pixel convolution (`layers.ConvTranspose4x4`, `_sub_pixel_input_gradient`)."""
  n, h, w, c4 = phases.shape
  blocks = phases.reshape(n, h, w, 2, 2, c4 // 4).transpose(0, 1, 3, 2, 4, 5)
  return blocks.reshape(n, 2 * h, 2 * w, c4 // 4)


# Input row 2m + r receives output-gradient row m + d through kernel tap _SUB_PIXEL_TAP[d, r]
# (3: none): row 2m through tap 1 of row m; row 2m + 1 through tap 2 of row m and tap 0 of
# row m + 1.
_SUB_PIXEL_TAP = ((1, 2), (3, 0))


def _sub_pixel_input_gradient(g, rhs):
  """Input gradient of `_stride2_conv` from its output gradient g [N, h, w, O]: a 2x2 / stride 1
  convolution of g (padded by one row and column at the end) to the four input phases
  [N, h, w, 4 * I], then depth-to-space to [N, 2h, 2w, I]. XLA's own form convolves g dilated
  with zeros, which XNNPACK does not take."""
  features = rhs.shape[2]
  taps = jnp.pad(rhs.transpose(0, 1, 3, 2), ((0, 1), (0, 1), (0, 0), (0, 0)))  # [4, 4, O, I]
  index = jnp.asarray(_SUB_PIXEL_TAP)
  kernel = taps[index[:, None, :, None], index[None, :, None, :]]    # [dy, dx, r, c, O, I]
  kernel = kernel.transpose(0, 1, 4, 2, 3, 5).reshape(2, 2, -1, 4 * features)
  return depth_to_space(
      _xnnpack_form(g, kernel, (1, 1), ((0, 1), (0, 1)), dimension_numbers=_NHWC))


def _stride2_gradients(residuals, g):
  """Gradients of `_stride2_conv`: the input gradient in sub-pixel form, the weight gradient
  XLA's own (XNNPACK takes it)."""
  lhs, rhs = residuals
  weight_gradient = jax.vjp(lambda k: _stride2_conv(lhs, k), rhs)[1](g)[0]
  return _sub_pixel_input_gradient(g, rhs), weight_gradient


_stride2_conv_space_to_depth_forward = jax.custom_vjp(_space_to_depth_forward)
_stride2_conv_space_to_depth_forward.defvjp(
    lambda lhs, rhs: (_space_to_depth_forward(lhs, rhs), (lhs, rhs)), _stride2_gradients)
_stride2_conv_sub_pixel_input_gradient = jax.custom_vjp(_stride2_conv)
_stride2_conv_sub_pixel_input_gradient.defvjp(
    lambda lhs, rhs: (_stride2_conv(lhs, rhs), (lhs, rhs)), _stride2_gradients)


_REWRITES = (_single_channel_stride2_as_space_to_depth, _stride2_with_sub_pixel_input_gradient,
             _strided_1x1_as_subsampled, _narrow_output_padded)


def _xnnpack_form(lhs, rhs, window_strides, padding, **kwargs):
  plain_nhwc = (
      not isinstance(padding, str)
      and kwargs.get("dimension_numbers") is not None
      and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, kwargs["dimension_numbers"])
      == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
      and all(kwargs.get(name) in (None, 1, (1, 1), [1, 1])
              for name in ("lhs_dilation", "rhs_dilation", "feature_group_count",
                           "batch_group_count"))
      and kwargs.get("precision") is None and kwargs.get("preferred_element_type") is None)
  if plain_nhwc:
    for rewrite in _REWRITES:
      out = rewrite(lhs, rhs, window_strides, padding)
      if out is not None:
        return out
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides, padding,
                         **kwargs) -> jax.Array:
  """`jax.lax.conv_general_dilated` (same arguments, result and errors) in the forms of this
  module's docstring on the CPU backend; the plain convolution elsewhere. The two rewrites
  apply only to NHWC input with an HWIO kernel (flax's layout), explicit padding pairs, no
  dilation, groups, precision or preferred element type; everything else is only
  materialised."""
  if jax.default_backend() != "cpu":
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
  out = _xnnpack_form(_materialised_value(lhs), rhs, window_strides, padding, **kwargs)
  return _materialised_cotangent(out)


def convolution_equations(fn, *args) -> list:
  """The `conv_general_dilated` equations of the jaxpr of `fn(*args)`, including those inside
  custom-VJP and other sub-jaxprs, in order: which convolutions a function really runs (each
  with `invars` avals and `params`: strides, padding, dilations)."""
  found = []

  def walk(jaxpr):
    for equation in jaxpr.eqns:
      if equation.primitive.name == "conv_general_dilated":
        found.append(equation)
      for value in equation.params.values():
        for sub in (value if isinstance(value, (tuple, list)) else (value,)):
          if hasattr(sub, "eqns"):
            walk(sub)
          elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
            walk(sub.jaxpr)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


class Conv(nn.Conv):
  """`flax.linen.Conv` (same fields, variables and default names) computed with
  :func:`conv_general_dilated`."""
  conv_general_dilated: Any = conv_general_dilated
