"""Backbones (NHWC): the ResNet-CIFAR stem and stages of ACM's Table 1.

Source: ACM paper (Dai et al., WACV 2021) Table 1 and Sec. 4.4; stem and stage layout of the
reference code (open-acm, YimianDai/open-acm, model/segmentation.py, and its PyTorch port in
BasicIRSTD, XinyiYing/BasicIRSTD, model/ACM/model_ACM.py).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from irst_jax.models import layers


class CifarStem(nn.Module):
  """BN on the raw input, then the stem convolutions.

  `tiny=False` (reference-code default): conv3x3 s2 (C0) - conv3x3 (C0) - conv3x3 (2 C0), each
  with BN + ReLU, then max-pool 3x3 s2 pad 1: output [N, H/4, W/4, 2 C0].
  `tiny=True` (the paper's Table 1 "Conv-1"): one conv3x3 s1 (2 C0) + BN + ReLU, full
  resolution: output [N, H, W, 2 C0].
  """
  stem_width: int
  tiny: bool = False
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.norm(name="input_bn")(x)
    if self.tiny:
      return nn.relu(self.norm(name="bn1")(layers.conv(2 * self.stem_width, 3, name="conv1")(x)))
    x = nn.relu(self.norm(name="bn1")(layers.conv(self.stem_width, 3, 2, name="conv1")(x)))
    x = nn.relu(self.norm(name="bn2")(layers.conv(self.stem_width, 3, name="conv2")(x)))
    x = nn.relu(self.norm(name="bn3")(layers.conv(2 * self.stem_width, 3, name="conv3")(x)))
    return layers.max_pool_3x3_s2(x)


class CifarResNet(nn.Module):
  """Stem + three residual stages (strides 1, 2, 2) of `num_blocks` BasicBlocks each.

  `channels` = [stem width, stage-1, stage-2, stage-3] (ACM: [8, 16, 32, 64]).
  Returns the three stage outputs (c1, c2, c3), NHWC, at strides (s, 2s, 4s) with s = 4
  (or 1 when `tiny`).
  """
  channels: Sequence[int]
  num_blocks: int
  tiny: bool = False
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = CifarStem(self.channels[0], self.tiny, self.norm, name="stem")(x)
    c1 = layers.ResidualStage(self.channels[1], self.num_blocks, 1, self.norm, name="layer1")(x)
    c2 = layers.ResidualStage(self.channels[2], self.num_blocks, 2, self.norm, name="layer2")(c1)
    c3 = layers.ResidualStage(self.channels[3], self.num_blocks, 2, self.norm, name="layer3")(c2)
    return c1, c2, c3
