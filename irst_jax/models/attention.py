"""Attention blocks shared by the networks (NHWC).

ACM family (Dai et al., "Asymmetric Contextual Modulation for Infrared Small Target
Detection", WACV 2021):
- `ChannelAttention`: the global channel attention G (eq. 2, GAP first) or the point-wise
  channel attention L (eq. 3, per pixel), both sigma(BN(W2 ReLU(BN(W1 .)))).
- `CrossLayerFusion`: AsymBiChaFuse (eq. 5) and the paper's ablation variants TopDownLocal,
  BiLocal, BiGlobal (Fig. 7) plus TopDownGlobal (the GAU/SK-style top-down baseline), used by
  both host networks (U-Net and FPN).

CBAM (Woo et al., ECCV 2018), DNA-Net's CSAM (Li et al., IEEE TIP 2022, eqs. 3-6):
- `CBAMChannelAttention` and `CBAMSpatialAttention`, used by DNA-Net's Res_CBAM blocks.

Squeeze-and-excitation (Hu et al., CVPR 2018): `SqueezeExcitation`, a DAEA ablation.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from irst_jax.models import layers

# name -> (top-down attention on the high-level feature, bottom-up attention on the low-level
# feature, reduction ratio r). None = no modulation on that path. The ratios keep the
# parameter budget of the attention weights at C^2 for every variant (paper Fig. 7 caption).
FUSION_VARIANTS = {
    "asym_bi": ("global", "pointwise", 4),        # ACM, eq. 5
    "bi_local": ("pointwise", "pointwise", 4),     # Fig. 7(b)
    "bi_global": ("global", "global", 4),          # Fig. 7(c)
    "top_down_local": ("pointwise", None, 2),      # Fig. 7(a)
    "top_down_global": ("global", None, 2),        # top-down only, global (GAU-like)
    "direct_add": (None, None, None),              # no attention: xl + xh (DAEA w/o ACM)
}


class ChannelAttention(nn.Module):
  """Channel attention weights sigma(BN(conv1x1(ReLU(BN(conv1x1_{C/r}(x)))))) in (0, 1).

  `pooling='global'`: x is first global-average-pooled, output [N, 1, 1, C] (ACM eq. 2, the
  top-down global channel attention G). `pooling='pointwise'`: per pixel, output [N, H, W, C]
  (ACM eq. 3, the bottom-up point-wise channel attention L). The 1x1 convs have biases, as in
  the reference code.
  """
  channels: int
  reduction: int = 4
  pooling: str = "global"
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.pooling == "global":
      x = jnp.mean(x, axis=(1, 2), keepdims=True)
    elif self.pooling != "pointwise":
      raise ValueError(f"pooling must be 'global' or 'pointwise', got {self.pooling!r}")
    y = layers.Conv(self.channels // self.reduction, (1, 1), kernel_init=layers.he_normal,
                name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = layers.Conv(self.channels, (1, 1), kernel_init=layers.he_normal, name="conv2")(y)
    return nn.sigmoid(self.norm(name="bn2")(y))


class CrossLayerFusion(nn.Module):
  """Cross-layer feature fusion of the ACM paper: AsymBiChaFuse and its ablation variants.

  Args (call): xh, the high-level (deep, already upsampled) feature [N, H, W, C_h]; xl, the
  low-level skip feature [N, H, W, C]. Returns [N, H, W, C].

  - `variant='asym_bi'` (ACM, eq. 5): Z = 2 * xl * G(xh) + 2 * xh * L(xl). The factor 2 and
    the post-fusion conv3x3 (bias) + BN + ReLU come from the reference implementation
    (open-acm AsymBiChaFuse); the paper omits them.
  - `bi_local` / `bi_global`: both paths point-wise / both global (Fig. 7(b), 7(c)).
  - `top_down_local` / `top_down_global`: Z = 2 * xl * A(xh) + xh with A point-wise / global
    and r = 2, the same C^2 attention budget (Fig. 7(a)).
  - `direct_add`: Z = xl + xh, no attention (open-acm's DirectAddFuse; DAEA's "without ACM"
    ablation, Sci. Rep. 2023 Table 4), the post-fusion conv kept.
  - `reduce_high=True` (the FPN host, open-acm's "...Reduce" fuses): xh first passes through a
    1x1 conv-BN-ReLU ("feature_high") mapping C_h to C channels.

  Raises ValueError for an unknown variant (the message lists the known ones).
  """
  channels: int
  variant: str = "asym_bi"
  reduce_high: bool = False
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, xh: jax.Array, xl: jax.Array) -> jax.Array:
    if self.variant not in FUSION_VARIANTS:
      raise ValueError(f"unknown fusion variant {self.variant!r}; expected one of "
                       f"{sorted(FUSION_VARIANTS)}")
    top_down, bottom_up, r = FUSION_VARIANTS[self.variant]
    if self.reduce_high:
      xh = layers.conv(self.channels, 1, use_bias=True, name="feature_high_conv")(xh)
      xh = nn.relu(self.norm(name="feature_high_bn")(xh))
    if xh.shape != xl.shape:
      raise ValueError(f"fusion inputs differ in shape: xh {xh.shape} vs xl {xl.shape}")
    if top_down is None:
      z = xl + xh
    elif bottom_up is None:
      z = 2.0 * xl * ChannelAttention(self.channels, r, top_down, self.norm, name="topdown")(xh) + xh
    else:
      top_down_weights = ChannelAttention(self.channels, r, top_down, self.norm,
                                          name="topdown")(xh)
      bottom_up_weights = ChannelAttention(self.channels, r, bottom_up, self.norm,
                                           name="bottomup")(xl)
      z = 2.0 * xl * top_down_weights + 2.0 * xh * bottom_up_weights
    z = layers.conv(self.channels, 3, use_bias=True, name="post_conv")(z)
    return nn.relu(self.norm(name="post_bn")(z))



# ShuffleAttention `branches`: name -> (gate of the first half, gate of the second half);
# 'global' = sigmoid(w * GAP(x) + b), 'local' = sigmoid(w * GN(x) + b).
SA_BRANCHES = {
    "asym": ("global", "local"),          # SA-Net
    "both_global": ("global", "global"),  # DAEA Table 5, symmetric extraction
    "both_local": ("local", "local"),     # DAEA Table 5, symmetric extraction
}


class ShuffleAttention(nn.Module):
  """Shuffle attention (SA-Net, Zhang & Yang, ICASSP 2021), used by EAAU-Net and DAEA.

  NHWC [N, H, W, C] -> [N, H, W, C]. The channels are split into `groups` groups and each
  group into two halves of C / (2G) channels: the channel half is gated by
  sigmoid(cweight * GAP(x0) + cbias), the spatial half by sigmoid(sweight * GN(x1) + sbias),
  GN being a GroupNorm with one channel a group (eps 1e-5, affine). The halves are
  concatenated back and the channels shuffled with 2 groups (reshape (2, C/2) -> transpose
  -> flatten), written with reshape/transpose. Parameters (each of shape (C / (2G),)):
  cweight, cbias, sweight, sbias initialised 0, 1, 0, 1, and gn_scale, gn_bias.
  Semantics and channel order as SA-Net's `sa_layer` (the SA-Net authors' code, wofmanaf/SA-Net,
  models/sa_resnet.py).

  `branches` (an `SA_BRANCHES` name) makes the two halves symmetric for DAEA's ablation
  (Sci. Rep. 2023, Table 5): 'both_global' gates the second half by GAP as well (sweight,
  sbias; no GroupNorm), 'both_local' gates the first half by its own GroupNorm as well
  (cweight, cbias, c_gn_scale, c_gn_bias). The default 'asym' is SA-Net's.

  Raises ValueError when `groups` does not divide C / 2, or for an unknown `branches`.
  """
  groups: int = 8
  epsilon: float = 1e-5
  branches: str = "asym"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    if c % 2 or (c // 2) % self.groups:
      raise ValueError(f"ShuffleAttention: groups={self.groups} must divide C/2 = {c / 2} "
                       f"(input with C = {c} channels)")
    if self.branches not in SA_BRANCHES:
      raise ValueError(f"unknown ShuffleAttention branches {self.branches!r}; expected one of "
                       f"{sorted(SA_BRANCHES)}")
    half = c // (2 * self.groups)
    init = lambda value: (lambda key, shape: jnp.full(shape, value, jnp.float32))

    def gated(part: jax.Array, kind: str, prefix: str, gn_prefix: str) -> jax.Array:
      weight = self.param(f"{prefix}weight", init(0.0), (half,))
      bias = self.param(f"{prefix}bias", init(1.0), (half,))
      mean = jnp.mean(part, axis=(1, 2), keepdims=True)
      if kind == "global":
        return part * nn.sigmoid(weight * mean + bias)
      gn_scale = self.param(f"{gn_prefix}gn_scale", init(1.0), (half,))
      gn_bias = self.param(f"{gn_prefix}gn_bias", init(0.0), (half,))
      var = jnp.mean(jnp.square(part - mean), axis=(1, 2), keepdims=True)
      normalised = (part - mean) * jax.lax.rsqrt(var + self.epsilon) * gn_scale + gn_bias
      return part * nn.sigmoid(weight * normalised + bias)

    # channel index c = g * C/G + branch * C/(2G) + j
    grouped = x.reshape(n, h, w, self.groups, 2, half)
    first, second = SA_BRANCHES[self.branches]
    out = jnp.stack([gated(grouped[..., 0, :], first, "c", "c_"),
                     gated(grouped[..., 1, :], second, "s", "")], axis=-2).reshape(n, h, w, c)
    # channel shuffle, 2 groups: (2, C/2) -> (C/2, 2)
    return out.reshape(n, h, w, 2, c // 2).swapaxes(-1, -2).reshape(n, h, w, c)


# EAAU-Net (Zhang et al., Remote Sensing 2021) fusions:
# name -> (attention source and pooling for the modulation weights, SA on X, SA on Y), with
# Z = [SA](X) * T + W * [SA](Y) where the weights W (or T, for the top-down TGAM) come from
# a ChannelAttention (r = 4) on the low-level X (or on the high-level Y for TGAM).
EAA_VARIANTS = {
    "eaa": ("low", "global", True, True),           # eq. 9: SA(X) + G(X) * SA(Y)
    "blam": ("low", "pointwise", True, True),       # Fig. 8a: local instead of global weights
    "tgam": ("high", "global", True, True),         # Fig. 8b: G(Y) * SA(X) + SA(Y)
    "single_sa": ("low", "global", False, True),    # Fig. 8c: X + G(X) * SA(Y)
    "only_baa": ("low", "global", False, False),    # Fig. 8d: X + G(X) * Y
    "only_sa": (None, None, True, True),            # Fig. 8e: SA(X) + SA(Y)
}


class EnhancedAsymmetricAttention(nn.Module):
  """The EAA module of EAAU-Net (Sec. 3.2, eq. 9) and its Fig. 8 ablation variants.

  Call with xh = Y, the upsampled deep feature, and xl = X, the skip feature, both
  [N, H, W, C]; returns Z [N, H, W, C]. G is the bottom-up global channel attention of eqs.
  1-2 (GAP, FC-BN-ReLU-FC-BN-sigmoid, r = 4; FCs as 1x1 convs) computed from X.
  Choices the paper leaves open (Sec. 3.2, Fig. 3): no convolution after the sum (the
  decoder's UpStage blocks follow), and the SA group count `sa_groups` (SA-Net's 64 does not
  fit 16-32 channels; default 4).
  """
  channels: int
  variant: str = "eaa"
  sa_groups: int = 4
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, xh: jax.Array, xl: jax.Array) -> jax.Array:
    if self.variant not in EAA_VARIANTS:
      raise ValueError(f"unknown EAA variant {self.variant!r}; expected one of "
                       f"{sorted(EAA_VARIANTS)}")
    source, pooling, sa_low, sa_high = EAA_VARIANTS[self.variant]
    x = ShuffleAttention(self.sa_groups, name="sa_low")(xl) if sa_low else xl
    y = ShuffleAttention(self.sa_groups, name="sa_high")(xh) if sa_high else xh
    if source is None:
      return x + y
    weights = ChannelAttention(self.channels, 4, pooling, self.norm, name="modulation")(
        xl if source == "low" else xh)
    return x + weights * y if source == "low" else weights * x + y


def fusion_module(name: str, channels: int, *, norm: layers.ModuleDef,
                  reduce_high: bool = False, sa_groups: int = 4, module_name: str) -> nn.Module:
  """The cross-layer fusion called `name`: an ACM variant (FUSION_VARIANTS) or an EAAU-Net
  variant (EAA_VARIANTS). Raises ValueError listing both families for an unknown name."""
  if name in FUSION_VARIANTS:
    return CrossLayerFusion(channels, name, reduce_high, norm, name=module_name)
  if name in EAA_VARIANTS and not reduce_high:
    return EnhancedAsymmetricAttention(channels, name, sa_groups, norm, name=module_name)
  raise ValueError(f"unknown fusion {name!r}; expected one of {sorted(FUSION_VARIANTS)} "
                   f"(ACM) or, in U-Net hosts, {sorted(EAA_VARIANTS)} (EAAU-Net)")


# CBAM (Woo et al., ECCV 2018) as used by DNA-Net's CSAM (Li et al., TIP 2022,
# Sec. III-B3, eqs. 3-6) inside its Res_CBAM blocks; shared with the
# models that ablate CBAM (DAEA). Both return the attention weights; the caller multiplies.


class CBAMChannelAttention(nn.Module):
  """CBAM channel attention M_c = sigmoid(MLP(AvgPool(x)) + MLP(MaxPool(x))), [N, 1, 1, C].

  NHWC input [N, H, W, C]. The shared MLP is two bias-free 1x1 convolutions C -> C // r -> C
  with a ReLU between them (`fc1`, `fc2`; the DNA-Net reference's `ChannelAttention`,
  r = 16). C // r is floored; when it is 0 (C < r, e.g. the 8-channel level of DNA-Net's
  ResNet10-Light) the MLP has zero-size weights and outputs 0, so M_c = sigmoid(0) = 0.5,
  as PyTorch computes with its 0-channel convolutions.
  """
  reduction: int = 16
  kernel_init: nn.initializers.Initializer = layers.he_normal

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    hidden = c // self.reduction
    init = self.kernel_init if hidden else nn.initializers.zeros   # fans of 0 would divide by 0
    fc1 = layers.Conv(hidden, (1, 1), use_bias=False, kernel_init=init, name="fc1")
    fc2 = layers.Conv(c, (1, 1), use_bias=False, kernel_init=init, name="fc2")
    mlp = lambda v: fc2(nn.relu(fc1(v)))
    avg = jnp.mean(x, axis=(1, 2), keepdims=True)
    mx = jnp.max(x, axis=(1, 2), keepdims=True)
    return nn.sigmoid(mlp(avg) + mlp(mx))


class CBAMSpatialAttention(nn.Module):
  """CBAM spatial attention M_s = sigmoid(conv_kxk([mean_c(x), max_c(x)])), [N, H, W, 1].

  NHWC input [N, H, W, C]; the channel-mean map comes first in the 2-channel concatenation,
  the convolution (`conv1`, k = 7, padding 3) has no bias (the DNA-Net reference's
  `SpatialAttention`). Raises ValueError for an even `kernel_size` ('same' padding needs an
  odd one).
  """
  kernel_size: int = 7
  kernel_init: nn.initializers.Initializer = layers.he_normal

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = jnp.concatenate([jnp.mean(x, axis=-1, keepdims=True),
                              jnp.max(x, axis=-1, keepdims=True)], axis=-1)
    if self.kernel_size % 2 != 1:
      raise ValueError(f"kernel_size must be odd for 'same' padding, got {self.kernel_size}")
    k, pad = self.kernel_size, self.kernel_size // 2
    y = layers.Conv(1, (k, k), padding=((pad, pad), (pad, pad)), use_bias=False,
                    kernel_init=self.kernel_init, name="conv1")(pooled)
    return nn.sigmoid(y)


class SqueezeExcitation(nn.Module):
  """Squeeze-and-excitation weights sigmoid(fc2(ReLU(fc1(GAP(x))))), [N, 1, 1, C].

  NHWC input [N, H, W, C]. Source: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018
  (Sec. 3, eqs. 2-3); the two fully connected layers (`fc1` C -> max(1, C // r), `fc2` back
  to C, with biases) are 1x1 convolutions, r = 16 as in the paper. The caller multiplies.
  Used by DAEA's "SA replaced by SE" ablation (Sci. Rep. 2023, Table 4).
  """
  reduction: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    y = jnp.mean(x, axis=(1, 2), keepdims=True)
    y = nn.relu(layers.Conv(max(1, c // self.reduction), (1, 1), kernel_init=layers.he_normal,
                        name="fc1")(y))
    return nn.sigmoid(layers.Conv(c, (1, 1), kernel_init=layers.he_normal, name="fc2")(y))
