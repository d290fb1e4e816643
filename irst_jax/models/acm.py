"""ACM-U-Net and ACM-FPN (Dai, Wu, Zhou and Barnard, "Asymmetric Contextual Modulation for
Infrared Small Target Detection", WACV 2021, Sec. 4.4, Fig. 6).

Host networks whose cross-layer fusions are chosen by name (`attention.fusion_module`):
AsymBiChaFuse by default, an ACM ablation variant, or, in the U-Net host, an EAAU-Net EAA
variant (EAAU-Net is this U-Net with the tiny stem and EAA fusions, see models/__init__.py).
Layout follows the reference implementation (open-acm, YimianDai/open-acm,
model/segmentation.py, and its PyTorch port in BasicIRSTD, XinyiYing/BasicIRSTD,
model/ACM/model_ACM.py): input BN, stem, ResNet-CIFAR stages with
`num_blocks` blocks, decoder, FCN head, bilinear x4 back to the input size (non-tiny).

Input: NHWC [N, H, W, C_in] with H, W multiples of 16 (non-tiny; 4 when tiny).
Output: logits [N, H, W, 1] (apply sigmoid for probabilities).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

from irst_jax.models import attention, backbones, layers


class _ACMBase(nn.Module):
  """Input check, BatchNorm, backbone and head shared by the host networks; each subclass
  defines `decode(c1, c2, c3, norm)`, its decoder from the stage outputs (strides s, 2s, 4s)
  to stride-s features."""

  channels: Sequence[int] = (8, 16, 32, 64)
  num_blocks: int = 3
  fusion: str = "asym_bi"
  tiny: bool = False
  head_dropout: float = 0.1
  sa_groups: int = 4   # shuffle-attention groups of the EAA fusions (EAAU-Net)
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    multiple = 4 if self.tiny else 16
    if x.ndim != 4 or x.shape[1] % multiple or x.shape[2] % multiple:
      raise ValueError(f"{type(self).__name__} expects NHWC input with H and W multiples of "
                       f"{multiple}, got shape {x.shape}")
    norm = layers.batch_norm(train, self.axis_name)
    features = backbones.CifarResNet(self.channels, self.num_blocks, self.tiny, norm,
                                     name="backbone")(x)
    decoded = self.decode(*features, norm=norm)
    logits = layers.FCNHead(1, self.head_dropout, norm, name="head")(decoded, train)
    if not self.tiny:
      logits = layers.resize_bilinear(logits, x.shape[1:3])
    return logits


class ACMUNet(_ACMBase):
  """ACM-U-Net: ConvTranspose(4, s2, p1) up, fusion(xh=up, xl=skip), `num_blocks` blocks; twice.

  With channels (8, 16, 32, 64), num_blocks 3, in_channels 1: 397,823 parameters, the
  BasicIRSTD ACM (ASKCResUNet) model (XinyiYing/BasicIRSTD, model/ACM/model_ACM.py).
  """

  def decode(self, c1, c2, c3, norm):
    up2 = layers.ConvTranspose4x4(self.channels[2], name="deconv2")(c3)
    f2 = attention.fusion_module(self.fusion, self.channels[2], norm=norm, sa_groups=self.sa_groups,
                                 module_name="fuse2")(up2, c2)
    f2 = layers.ResidualStage(self.channels[2], self.num_blocks, 1, norm, name="uplayer2")(f2)
    up1 = layers.ConvTranspose4x4(self.channels[1], name="deconv1")(f2)
    f1 = attention.fusion_module(self.fusion, self.channels[1], norm=norm, sa_groups=self.sa_groups,
                                 module_name="fuse1")(up1, c1)
    return layers.ResidualStage(self.channels[1], self.num_blocks, 1, norm, name="uplayer1")(f1)


class ACMFPN(_ACMBase):
  """ACM-FPN: bilinear resize of the deep map to the skip's size, fusion with the 1x1
  "feature_high" reduction on xh (open-acm's AsymBiChaFuseReduce), twice; no decoder blocks."""

  def decode(self, c1, c2, c3, norm):
    up2 = layers.resize_bilinear(c3, c2.shape[1:3])
    f2 = attention.fusion_module(self.fusion, self.channels[2], norm=norm, reduce_high=True,
                                 module_name="fuse2")(up2, c2)
    up1 = layers.resize_bilinear(f2, c1.shape[1:3])
    return attention.fusion_module(self.fusion, self.channels[1], norm=norm, reduce_high=True,
                                   module_name="fuse1")(up1, c1)
