"""Context-guided, axial and reverse attention (NHWC), the blocks of CGRANet
(Zhong et al., JSTARS 2023) and of the published designs it builds on (CGNet, PraNet,
CaraNet); kept apart from attention.py (the ACM / SA / CBAM family).

- `ContextGuidedBlock`: CGRANet's CGM (Sec. III-B, Fig. 2), CGNet's context-guided block
  (Wu et al., TIP 2021): entry 1x1 conv, f_local, f_surround (dilated), f_joint, f_global.
- `AxialAttention`: self-attention along the height or the width axis (Sec. III-D, eq. 1),
  the factorised (axial) 2-D attention of Axial-DeepLab / CaraNet's A-RA module.
- `ReverseAttention`: CGRANet's RAM (Sec. III-D, Fig. 4), PraNet's reverse attention with
  CaraNet's axial attention: 1 - sigmoid(coarse map) weights the attended feature, a conv
  stack predicts a residual added to the coarse map.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from irst_jax.models import layers


class PReLU(nn.Module):
  """PyTorch `nn.PReLU(C)`: x where x >= 0, slope_c * x elsewhere; one slope a channel
  (param `slope`, [C], initialised 0.25 as PyTorch). Shape-preserving, channels last."""
  init: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param("slope", nn.initializers.constant(self.init), (x.shape[-1],))
    return jnp.where(x >= 0, x, slope * x)


class ContextGuidedBlock(nn.Module):
  """Context-guided module (CGRANet Sec. III-B, Fig. 2), NHWC [N, H, W, C_in] -> [N, H, W, features].

  - entry: 1x1 conv to features / 2 channels (+ BN + PReLU, CGNet's ConvBNPReLU; the paper
    only says "reducing channel number", read as CGNet's halving so that the concatenation
    below has `features` channels) `entry_conv`, `entry_bn`, `entry_prelu`;
  - f_local: 3x3 conv (standard, as the paper says; CGNet uses a channel-wise one) `local`;
  - f_surround: 3x3 conv with dilation `dilation` (3 in the paper) `surround`;
  - f_joint: concat(f_local, f_surround) + BN + PReLU `joint_bn`, `joint_prelu`;
  - f_global: GAP + MLP (Dense features -> features // reduction, ReLU, Dense -> features,
    sigmoid; CGNet's FGlo with r = 16, `reduction`, the paper gives no ratio) `global_fc1`,
    `global_fc2`; the joint feature is reweighted channel-wise by it (the "scale layer").
  No residual (CGNet's global residual needs C_in == features; the paper has none).
  Convolutions have no bias (a BN follows or, for f_local / f_surround, the joint BN does).

  Raises ValueError when `features` is odd.
  """
  features: int
  dilation: int = 3
  reduction: int = 16
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.features % 2:
      raise ValueError(f"ContextGuidedBlock needs an even number of features, got "
                       f"{self.features}")
    half = self.features // 2
    x = layers.conv(half, 1, name="entry_conv")(x)
    x = PReLU(name="entry_prelu")(self.norm(name="entry_bn")(x))
    local = layers.conv(half, 3, name="local")(x)
    surround = layers.conv(half, 3, dilation=self.dilation, name="surround")(x)
    joint = self.norm(name="joint_bn")(jnp.concatenate([local, surround], axis=-1))
    joint = PReLU(name="joint_prelu")(joint)
    context = jnp.mean(joint, axis=(1, 2), keepdims=True)
    context = nn.relu(nn.Dense(max(self.features // self.reduction, 1), name="global_fc1")(context))
    return joint * nn.sigmoid(nn.Dense(self.features, name="global_fc2")(context))


class AxialAttention(nn.Module):
  """Self-attention along one spatial axis with a residual, NHWC [N, H, W, C] -> same.

  eq. 1 of CGRANet: softmax(Q K^T / sqrt(d_K)) V, with Q, K = 1x1 convs to
  d_K = max(C // reduction, 1) channels and V a 1x1 conv to C channels (`query`, `key`,
  `value`, with bias), restricted to positions in the same column (`axis='height'`: each
  pixel attends to the H pixels of its column) or the same row (`axis='width'`). Output
  x + gamma * attention (SAGAN / CaraNet residual, learnable scalar `gamma` initialised
  `gamma_init`, 0 there). Choices the paper leaves open: `reduction` (8, SAGAN / CaraNet),
  `scaled` (the 1 / sqrt(d_K) of eq. 1; CaraNet omits it), `gamma_init`.

  Raises ValueError for an axis other than 'height' or 'width'.
  """
  axis: str = "height"
  reduction: int = 8
  scaled: bool = True
  gamma_init: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.axis not in ("height", "width"):
      raise ValueError(f"AxialAttention axis must be 'height' or 'width', got {self.axis!r}")
    c = x.shape[-1]
    d = max(c // self.reduction, 1)
    project = lambda features, name: layers.Conv(features, (1, 1), kernel_init=layers.he_normal,
                                             name=name)(x)
    q, k, v = project(d, "query"), project(d, "key"), project(c, "value")
    if self.axis == "height":   # attend along axis 2 of [N, W, H, C]
      q, k, v = (t.swapaxes(1, 2) for t in (q, k, v))
    logits = jnp.einsum("nabc,nagc->nabg", q, k)
    if self.scaled:
      logits = logits / math.sqrt(d)
    out = jnp.einsum("nabg,nagc->nabc", jax.nn.softmax(logits, axis=-1), v)
    if self.axis == "height":
      out = out.swapaxes(1, 2)
    gamma = self.param("gamma", nn.initializers.constant(self.gamma_init), ())
    return x + gamma * out


class ReverseAttention(nn.Module):
  """Reverse attention module (CGRANet Sec. III-D, Fig. 4; PraNet's RA with CaraNet's axial
  attention).

  Call with `feature` [N, h, w, C] (the CGM output of this level) and `coarse` [N, h, w, 1],
  the coarser prediction (logits) already resized to (h, w). Returns refined logits
  [N, h, w, 1] = coarse + R((1 - sigmoid(coarse)) * A(feature)), A = height-axis then
  width-axis `AxialAttention` (`height_attention`, `width_attention`), R = `refine_layers`
  3x3 conv-BN-ReLU with C channels (`refine{i}_conv`, `refine{i}_bn`) then a 3x3 conv (bias)
  to one channel (`refine_out`). The depth of R (2, CaraNet's) is not given by the paper.
  """
  refine_layers: int = 2
  attention_reduction: int = 8
  attention_scaled: bool = True
  attention_gamma_init: float = 0.0
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, feature: jax.Array, coarse: jax.Array) -> jax.Array:
    if feature.shape[:3] != coarse.shape[:3]:
      raise ValueError(f"ReverseAttention: feature {feature.shape} and coarse map "
                       f"{coarse.shape} differ in batch or spatial size")
    y = feature
    for axis in ("height", "width"):
      y = AxialAttention(axis, self.attention_reduction, self.attention_scaled,
                         self.attention_gamma_init, name=f"{axis}_attention")(y)
    y = y * (1.0 - nn.sigmoid(coarse))
    for i in range(self.refine_layers):
      y = nn.relu(self.norm(name=f"refine{i}_bn")(
          layers.conv(feature.shape[-1], 3, name=f"refine{i}_conv")(y)))
    return coarse + layers.conv(1, 3, use_bias=True, name="refine_out")(y)
