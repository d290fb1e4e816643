"""Res2Net v1b (Gao et al., "Res2Net: A New Multi-Scale Backbone Architecture", TPAMI 2021),
the backbone of PraNet, CaraNet and CGRANet (Zhong, Zhang and Duan, IEEE JSTARS 2023, Sec. III-A,
ref. [41]), NHWC.

Layout of the widely used `Res2Net_v1b` (the ImageNet-pretrained "v1b" models), written from
its description, module names kept so that `irst_jax.convert.res2net_v1b_rules` maps its
state_dict (`convert.load_res2net_v1b_weights` loads one after `init`):
- Deep stem ("v1b", Bag-of-Tricks ResNet-D): conv3x3 s2 (stem_width) - BN - ReLU - conv3x3
  (stem_width) - BN - ReLU - conv3x3 (2 stem_width); then BN `bn1` - ReLU - max-pool 3x3 s2:
  stride 4. torch `conv1.{0,1,3,4,6}`, `bn1`.
- Four stages (torch `layer1`..`layer4`, Flax blocks `layer{l}_{b}`) of `num_blocks` bottlenecks, planes p = base_planes * (1, 2, 4, 8),
  strides (1, 2, 2, 2), output 4p channels (expansion 4): strides 4, 8, 16, 32 in all.
- Bottle2neck (`Bottle2neck`): 1x1 conv to w * scale channels, w = floor(p * base_width / 64),
  BN, ReLU; split into `scale` groups x_1..x_s of w channels; for i < s, y_i = ReLU(BN(K_i(x_i +
  y_{i-1}))) (the sum only in 'normal' blocks; the first block of a stage, 'stage', convolves
  each x_i on its own), K_i a 3x3 conv carrying the block's stride; the last group is passed on
  unchanged ('normal') or through AvgPool2d(3, stride, padding 1, zero padding counted, as
  PyTorch's default) ('stage'); concat, 1x1 conv to 4p, BN; shortcut; ReLU after the add.
- Shortcut of the first block of a stage ("v1b", ResNet-D): AvgPool2d(stride, stride) (the
  identity at stride 1), 1x1 conv (no bias), BN; torch `downsample.{0,1,2}`. PyTorch's pool
  uses ceil_mode; H and W are multiples of 32 here, so every pooled size is even and the
  plain 2 x 2 mean is the same.
Res2Net-50 v1b 26w x 4s: stem_width 32, base_planes 64, base_width 26, scale 4, num_blocks
(3, 4, 6, 3): 23,669,352 parameters with RGB input (23,668,776 grey) without the ImageNet
classifier (fc, 2,049,000 more: 25.72 M, the published size).
Smaller configurations (fewer blocks, narrower planes) are the same code with other fields.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from irst_jax.models import layers


class Bottle2neck(nn.Module):
  """One Res2Net bottleneck, NHWC [N, H, W, C_in] -> [N, H / strides, W / strides, 4 planes].

  `stage=True`: the first block of a stage (torch stype 'stage': no hierarchical sums, the last
  split average-pooled, and the avg-pool / 1x1 conv / BN shortcut `downsample_*`).
  """
  planes: int
  strides: int = 1
  stage: bool = False
  base_width: int = 26
  scale: int = 4
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = self.planes * self.base_width // 64
    out = nn.relu(self.norm(name="bn1")(layers.conv(width * self.scale, 1, name="conv1")(x)))
    splits = jnp.split(out, self.scale, axis=-1)
    outputs, y = [], None
    for i in range(self.scale - 1):
      y = splits[i] if self.stage or i == 0 else y + splits[i]
      y = layers.conv(width, 3, self.strides, name=f"convs_{i}")(y)
      y = nn.relu(self.norm(name=f"bns_{i}")(y))
      outputs.append(y)
    last = splits[-1]
    if self.stage:
      # avg_pool with zero padding ((1, 1), (1, 1)) counted in the mean, as zero-padding then
      # an unpadded pool (the form jax2onnx converts: irst_jax.serving.onnx_export)
      last = jnp.pad(last, ((0, 0), (1, 1), (1, 1), (0, 0)))
      last = nn.avg_pool(last, window_shape=(3, 3), strides=(self.strides, self.strides),
                         padding="VALID")
    out = jnp.concatenate(outputs + [last], axis=-1)
    out = self.norm(name="bn3")(layers.conv(4 * self.planes, 1, name="conv3")(out))
    residual = x
    if self.stage:
      if self.strides > 1:
        residual = nn.avg_pool(x, window_shape=(self.strides, self.strides),
                               strides=(self.strides, self.strides))
      residual = self.norm(name="downsample_bn")(
          layers.conv(4 * self.planes, 1, name="downsample_conv")(residual))
    return nn.relu(out + residual)


class Res2NetV1b(nn.Module):
  """Res2Net v1b backbone (see the module docstring); NHWC input [N, H, W, C_in] with H, W
  multiples of 32 (checked by the host network).

  Returns the four stage outputs (layer1..layer4) at strides 4, 8, 16, 32 with
  4 * base_planes * (1, 2, 4, 8) channels (256, 512, 1024, 2048 for Res2Net-50).
  """
  num_blocks: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 26
  scale: int = 4
  stem_width: int = 32
  base_planes: int = 64
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    for i, features in enumerate((self.stem_width, self.stem_width), start=1):
      x = layers.conv(features, 3, 2 if i == 1 else 1, name=f"stem_conv{i}")(x)
      x = nn.relu(self.norm(name=f"stem_bn{i}")(x))
    x = layers.conv(2 * self.stem_width, 3, name="stem_conv3")(x)
    x = layers.max_pool_3x3_s2(nn.relu(self.norm(name="bn1")(x)))
    features = []
    for stage, blocks in enumerate(self.num_blocks):
      planes = self.base_planes * 2 ** stage
      for b in range(blocks):
        x = Bottle2neck(planes, (1 if stage == 0 else 2) if b == 0 else 1, b == 0,
                        self.base_width, self.scale, self.norm,
                        name=f"layer{stage + 1}_{b}")(x)
      features.append(x)
    return tuple(features)
