"""Convolutions in the forms XLA:CPU (XNNPACK, under `irst_jax/xla_cpu_flags.py`) runs fastest.

:func:`conv_general_dilated` has the arguments, values and gradients of
`jax.lax.conv_general_dilated` (bitwise, or up to float32 summation order where a form is
rewritten); `irst_jax.models.layers` puts it, :func:`conv_transpose_4x4_s2` and
:func:`shifted_sums_conv` in place of the plain forms on CPU only (`irst_jax.cpu.form`).
The forms (measurements and commands: docs/performance.md):

- materialised operands: the input, and in the backward pass the output cotangent, are computed
  once into a buffer of their own, so that XLA does not duplicate the elementwise chain
  producing them into the transposes of the weight gradient;
- a k x k convolution with 2-7 output features has its kernel padded to 8 output features
  (XNNPACK takes it; XLA's own kernel is slower);
- the forward pass of a 3x3, stride-2, padding-1 convolution of a single-channel input is a 2x2
  convolution of its space-to-depth input;
- the input gradient of a 3x3, stride-2, padding-1 convolution with at most 16 input features is
  a sub-pixel convolution of the output gradient (XNNPACK does not take XLA's zero-dilated one);
- a strided 1x1 convolution without padding convolves the subsampled input;
- a 'same' k x k convolution of at most 2 features to 1 (CBAM's spatial attention) is k * k * C
  shifted multiply-adds, one fused pass (XLA:CPU's convolution libraries are slow at this shape);
- the 4x4, stride-2 transposed convolution is a 3x3 convolution to the four output phases and
  depth-to-space (its gradient is then free of dilated convolutions).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_NHWC = ("NHWC", "HWIO", "NHWC")
_MIN_XNNPACK_FEATURES = 8   # fewer output features: padded up to this many
_MAX_SUB_PIXEL_FEATURES = 16   # more input features: XLA's own stride-2 input gradient
_MAX_SHIFTED_SUMS_FEATURES = 2   # more input features: a convolution to one feature as it is


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
  `_stride2_gradients`. With 32 or more input features XLA's own input gradient is as fast."""
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
  a sub-pixel convolution (:func:`conv_transpose_4x4_s2`, `_sub_pixel_input_gradient`)."""
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


def _is_plain_nhwc(lhs, rhs, padding, kwargs) -> bool:
  """NHWC input, HWIO kernel, explicit padding pairs; no dilation, groups, precision or
  preferred element type: the convolutions this module rewrites."""
  return (
      not isinstance(padding, str)
      and kwargs.get("dimension_numbers") is not None
      and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, kwargs["dimension_numbers"])
      == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
      and all(kwargs.get(name) in (None, 1, (1, 1), [1, 1])
              for name in ("lhs_dilation", "rhs_dilation", "feature_group_count",
                           "batch_group_count"))
      and kwargs.get("precision") is None and kwargs.get("preferred_element_type") is None)


def _xnnpack_form(lhs, rhs, window_strides, padding, **kwargs):
  if _is_plain_nhwc(lhs, rhs, padding, kwargs):
    for rewrite in _REWRITES:
      out = rewrite(lhs, rhs, window_strides, padding)
      if out is not None:
        return out
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides, padding,
                         **kwargs) -> jax.Array:
  """`jax.lax.conv_general_dilated` (same arguments, result and errors) in the forms of this
  module's docstring. The rewrites apply only to NHWC input with an HWIO kernel (flax's
  layout), explicit padding pairs, no dilation, groups, precision or preferred element type;
  everything else is only materialised."""
  if _is_plain_nhwc(lhs, rhs, padding, kwargs) and _is_shifted_sums_shape(
      lhs, rhs, window_strides, padding):
    return shifted_sums_conv(lhs, rhs)
  out = _xnnpack_form(_materialised_value(lhs), rhs, window_strides, padding, **kwargs)
  return _materialised_cotangent(out)


def _is_shifted_sums_shape(lhs, rhs, window_strides, padding) -> bool:
  """A 'same' k x k (odd k > 1), stride-1 convolution of at most 2 features to 1."""
  k = rhs.shape[0]
  return (rhs.shape[3] == 1 and rhs.shape[2] <= _MAX_SHIFTED_SUMS_FEATURES
          and k == rhs.shape[1] and k % 2 == 1 and k > 1 and lhs.shape[3] == rhs.shape[2]
          and tuple(window_strides) == (1, 1)
          and [tuple(p) for p in padding] == [(k // 2, k // 2)] * 2)


@jax.custom_vjp
def shifted_sums_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'Same' k x k convolution (stride 1, zero padding k // 2, odd k) of NHWC ``x`` [N, H, W, C]
  with an HWIO ``kernel`` [k, k, C, 1] -> [N, H, W, 1], as k * k * C shifted multiply-adds of
  the zero-padded channel planes (one fused pass); the gradient is the convolution's, in this
  module's forms. Equal to the convolution up to float32 summation order."""
  return _shifted_sums(x, kernel)


def _shifted_sums(x, kernel):
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


def _shifted_sums_gradients(residuals, g):
  # Through the materialised convolution (the shape is no longer one of shifted sums' below).
  x, kernel = residuals
  return jax.vjp(lambda x, k: _materialised_cotangent(_xnnpack_form(
      _materialised_value(x), k, (1, 1), ((k.shape[0] // 2,) * 2,) * 2, dimension_numbers=_NHWC)),
      x, kernel)[1](g)


shifted_sums_conv.defvjp(lambda x, kernel: (_shifted_sums(x, kernel), (x, kernel)),
                         _shifted_sums_gradients)


# Sub-pixel form of a stride-2, kernel-4, padding-1 transposed convolution. Per axis,
# out[2i] = x[i-1] w[3] + x[i] w[1] and out[2i+1] = x[i] w[2] + x[i+1] w[0]: phase a of the
# output is a 3-tap convolution over x[i-1], x[i], x[i+1] with taps _PHASE_TAPS[a, tap, k].
_PHASE_TAPS = np.zeros((2, 3, 4), np.float32)
_PHASE_TAPS[0, 0, 3] = _PHASE_TAPS[0, 1, 1] = _PHASE_TAPS[1, 1, 2] = _PHASE_TAPS[1, 2, 0] = 1.0


def conv_transpose_4x4_s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """PyTorch's `ConvTranspose2d(kernel_size=4, stride=2, padding=1)` of NHWC ``x`` [N, H, W, I]
  with ``kernel`` [4, 4, I, O] (kernel[ky, kx, i, o] = torch_weight[i, o, ky, kx]), no bias,
  -> [N, 2H, 2W, O], as one 3x3 convolution to the 4 * O output phases (this module's
  :func:`conv_general_dilated`) and :func:`depth_to_space`. Exact (each output sums the same
  products)."""
  c_in, features = kernel.shape[2:]
  taps = jnp.asarray(_PHASE_TAPS, x.dtype)
  phases = jnp.einsum("ayk,bxl,klio->yxiabo", taps, taps, kernel)
  phases = phases.reshape(3, 3, c_in, 4 * features)
  return depth_to_space(
      conv_general_dilated(x, phases, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC))


def convolution_equations(fn, *args, platform: str | None = None) -> list:
  """The `conv_general_dilated` equations of the jaxpr of `fn(*args)`, including those inside
  custom-VJP and other sub-jaxprs, in order: which convolutions a function really runs (each
  with `invars` avals and `params`: strides, padding, dilations). With `platform` (e.g. "cpu"
  or "cuda"), of each `jax.lax.platform_dependent` only the branch that platform runs."""
  found = []

  def walk(jaxpr):
    for equation in jaxpr.eqns:
      if equation.primitive.name == "conv_general_dilated":
        found.append(equation)
      params = dict(equation.params)
      if platform is not None and params.get("branches_platforms") is not None:
        params["branches"] = [
            branch for branch, platforms in zip(params["branches"], params["branches_platforms"])
            if platforms is None or platform in platforms][:1]
      for value in params.values():
        for sub in (value if isinstance(value, (tuple, list)) else (value,)):
          if hasattr(sub, "eqns"):
            walk(sub)
          elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
            walk(sub.jaxpr)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found
