"""DNA-Net (Li et al., "Dense Nested Attention Network for Infrared Small Target Detection",
IEEE TIP 2022).

Structure (the paper and the module names / channel counts of the official PyTorch model,
YeRen123455/Infrared-Small-Target-Detection, model/model_DNANet.py):
- Node X^{i,j} (torch `conv{i}_{j}`) is a stage of blocks with nb_filter[i] channels: one block
  at level 0 (and for `conv0_4_final`), num_blocks[i - 1] blocks at level i >= 1. The first
  block maps the concatenated input channels to nb_filter[i] (1x1 conv + BN shortcut, as the
  shape changes); the others keep them.
- Encoder (paper eq. 1): X^{0,0} = node(input), X^{i,0} = node(maxpool2(X^{i-1,0})).
- Dense nested nodes (eq. 2), j >= 1, concatenated in this order:
  X^{i,j} = node([X^{i,0}, ..., X^{i,j-1}, up2(X^{i+1,j-1}), down2(X^{i-1,j})]),
  the last term only for i >= 1; up2 / down2 are bilinear x2 / x0.5 resampling.
- FPFM (Sec. III-C): X_final = node([up16(1x1(X^{4,0})), up8(1x1(X^{3,1})), up4(1x1(X^{2,2})),
  up2(1x1(X^{1,3})), X^{0,4}]), the 1x1 convs (with bias, torch `conv0_{4,3,2,1}_1x1`) mapping
  to nb_filter[0] channels.
- Heads: 1x1 conv (bias) to one logit channel. With `deep_supervision` (default) four heads
  `final1`..`final4` on X^{0,1}, X^{0,2}, X^{0,3}, X_final, returned as a tuple (the last is
  the prediction, `models.final_logits`); otherwise one head `final` on X_final.
- Every bilinear resampling uses align_corners=True (PyTorch `nn.Upsample(...,
  align_corners=True)`), `layers.resize_bilinear(..., align_corners=True)`.
- Block (`ResCBAMBlock`, torch `Res_CBAM_block`): conv3x3 (bias) - BN - ReLU - conv3x3 (bias)
  - BN, then x * M_c(x), then x * M_s(x) (CBAM, `attention.CBAMChannelAttention` with r = 16
  and `attention.CBAMSpatialAttention` 7x7: the paper's CSAM, eqs. 3-6), + shortcut, ReLU.
- Initialisation: Xavier (Glorot) normal for the convolution kernels, zero biases (paper
  Sec. IV-B: "We initialized the weights and bias of our model using the Xavier method").

Backbones (paper Table II / III, `backbone` field, see `BACKBONES`): resnet10, resnet18 (the
default and the golden file's), resnet34, resnet10_light (half the channels of resnet10) and
vgg10. The paper names them but gives neither blocks per level nor the VGG block; the block
counts used are those of the ResNet family (1-1-1-1, 2-2-2-2, 3-4-6-3), and vgg10 is
resnet10's layout with plain blocks (`ResCBAMBlock(shortcut=False)`: no residual add).
`nb_filter` / `num_blocks`, when given, override the backbone's.

Input: NHWC [N, H, W, C_in] with H and W multiples of 16 (four 2x poolings, and the x0.5 /
x2 resamplings must land on the pooled sizes). Output: a tuple of four logit maps
[N, H, W, 1] (deep supervision), or one such map.
Parameters: 4,696,568 with 1 input channel, 4,696,888 with 3 (resnet18, deep supervision).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from irst_jax.models import attention, layers

xavier_normal = nn.initializers.xavier_normal()

#: name -> (nb_filter, num_blocks per level 1..4, residual blocks?)
BACKBONES = {
    "resnet10": ((16, 32, 64, 128, 256), (1, 1, 1, 1), True),
    "resnet18": ((16, 32, 64, 128, 256), (2, 2, 2, 2), True),
    "resnet34": ((16, 32, 64, 128, 256), (3, 4, 6, 3), True),
    "resnet10_light": ((8, 16, 32, 64, 128), (1, 1, 1, 1), True),
    "vgg10": ((16, 32, 64, 128, 256), (1, 1, 1, 1), False),
}


def _conv(features: int, kernel: int, name: str, use_bias: bool = True) -> nn.Conv:
  # flax.linen.Conv, not layers.Conv: DNA-Net trains faster with it (docs/performance.md).
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)),
                 use_bias=use_bias, kernel_init=xavier_normal, name=name)


class ResCBAMBlock(nn.Module):
  """DNA-Net's Res_CBAM block, NHWC [N, H, W, C_in] -> [N, H, W, features].

  conv3x3 (bias) `conv1` - BN `bn1` - ReLU - conv3x3 (bias) `conv2` - BN `bn2`; multiplied by
  the channel attention `ca` (CBAM, hidden features // 16) and then by the spatial attention
  `sa` (7x7); plus the shortcut (identity, or 1x1 conv with bias `shortcut_conv` + BN
  `shortcut_bn` when C_in != features); ReLU. `shortcut=False` drops the residual add (the
  plain blocks of the vgg10 backbone).
  """
  features: int
  shortcut: bool = True
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(self.norm(name="bn1")(_conv(self.features, 3, "conv1")(x)))
    y = self.norm(name="bn2")(_conv(self.features, 3, "conv2")(y))
    y = y * attention.CBAMChannelAttention(16, xavier_normal, name="ca")(y)
    y = y * attention.CBAMSpatialAttention(7, xavier_normal, name="sa")(y)
    if self.shortcut:
      residual = x
      if x.shape[-1] != self.features:
        residual = self.norm(name="shortcut_bn")(_conv(self.features, 1, "shortcut_conv")(x))
      y = y + residual
    return nn.relu(y)


class DNAStage(nn.Module):
  """`num_blocks` ResCBAMBlocks (`block0`, ...), the first mapping C_in to `features`
  (the reference's `_make_layer`)."""
  features: int
  num_blocks: int = 1
  shortcut: bool = True
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_blocks):
      x = ResCBAMBlock(self.features, self.shortcut, self.norm, name=f"block{i}")(x)
    return x


def _resize(x: jax.Array, factor: float) -> jax.Array:
  h, w = x.shape[1:3]
  return layers.resize_bilinear(x, (int(h * factor), int(w * factor)), align_corners=True)


class DNANet(nn.Module):
  """DNA-Net; see the module docstring for the structure, shapes and sources.

  Fields: `backbone` (a `BACKBONES` name), `nb_filter` (5 widths) and `num_blocks` (blocks at
  levels 1-4) overriding the backbone's when given (None or empty: the backbone's), `deep_supervision` (four heads, tuple
  output) and `axis_name` (synchronised BatchNorm under pmap). The input channel count is
  taken from the input.
  """
  backbone: str = "resnet18"
  nb_filter: Optional[Sequence[int]] = None
  num_blocks: Optional[Sequence[int]] = None
  deep_supervision: bool = True
  axis_name: Optional[str] = None

  def resolved(self) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
    """(nb_filter, num_blocks, residual) after applying the overrides to the backbone."""
    if self.backbone not in BACKBONES:
      raise ValueError(f"unknown DNA-Net backbone {self.backbone!r}; expected one of "
                       f"{sorted(BACKBONES)}")
    nb_filter, num_blocks, residual = BACKBONES[self.backbone]
    nb_filter = tuple(self.nb_filter) if self.nb_filter else nb_filter
    num_blocks = tuple(self.num_blocks) if self.num_blocks else num_blocks
    if len(nb_filter) != 5 or len(num_blocks) != 4:
      raise ValueError(f"DNA-Net needs 5 nb_filter and 4 num_blocks, got {nb_filter} and "
                       f"{num_blocks}")
    return nb_filter, num_blocks, residual

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if x.ndim != 4 or x.shape[1] % 16 or x.shape[2] % 16:
      raise ValueError(f"DNANet expects NHWC input with H and W multiples of 16, got shape "
                       f"{x.shape}")
    nb, blocks, residual = self.resolved()
    norm = layers.batch_norm(train, self.axis_name)

    def node(i: int, name: str, inputs) -> jax.Array:
      n = 1 if i == 0 else blocks[i - 1]
      inputs = inputs[0] if len(inputs) == 1 else jnp.concatenate(inputs, axis=-1)
      return DNAStage(nb[i], n, residual, norm, name=name)(inputs)

    up = lambda v: _resize(v, 2)
    down = lambda v: _resize(v, 0.5)
    # X[i][j]: node X^{i,j}, computed in the reference's order (by anti-diagonals i + j).
    X = [[None] * 5 for _ in range(5)]
    X[0][0] = node(0, "conv0_0", [x])
    for d in range(1, 5):
      X[d][0] = node(d, f"conv{d}_0", [layers.max_pool_2x2(X[d - 1][0])])
      for j in range(1, d + 1):
        i = d - j
        inputs = X[i][:j] + [up(X[i + 1][j - 1])]
        if i > 0:
          inputs.append(down(X[i - 1][j]))
        X[i][j] = node(i, f"conv{i}_{j}", inputs)

    size = x.shape[1:3]
    pyramid = [layers.resize_bilinear(_conv(nb[0], 1, f"conv0_{i}_1x1")(X[i][4 - i]), size,
                                      align_corners=True) for i in (4, 3, 2, 1)]
    final = node(0, "conv0_4_final", pyramid + [X[0][4]])

    head = lambda name: _conv(1, 1, name)
    if self.deep_supervision:
      return (head("final1")(X[0][1]), head("final2")(X[0][2]), head("final3")(X[0][3]),
              head("final4")(final))
    return head("final")(final)
