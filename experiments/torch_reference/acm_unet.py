"""ACM-U-Net (ASKCResUNet of the BasicIRSTD port, REFERENCE.md §3) in PyTorch, NCHW.

Benchmark baseline only. Layout and state_dict names are those of
../shared/golden/acm_unet.npz; `tests/test_torch_reference.py` loads that file and
reproduces its outputs within 1e-4. Returns logits (the golden file's outputs are their
sigmoid).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def _bn_relu_conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
  return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


class BasicBlock(nn.Module):
  """conv3x3 (stride) - BN - ReLU - conv3x3 - BN, + identity or conv1x1-BN shortcut, ReLU."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
  return nn.Sequential(BasicBlock(cin, cout, stride),
                       *[BasicBlock(cout, cout, 1) for _ in range(blocks - 1)])


class AsymBiChaFuse(nn.Module):
  """ACM eq. (2)-(4): 2 xl * G(xh) + 2 xh * L(xl), then conv3x3-BN-ReLU."""

  def __init__(self, channels: int, r: int = 4):
    super().__init__()
    mid = channels // r
    self.topdown = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, mid, 1),
                                 nn.BatchNorm2d(mid), nn.ReLU(True), nn.Conv2d(mid, channels, 1),
                                 nn.BatchNorm2d(channels), nn.Sigmoid())
    self.bottomup = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(True),
                                  nn.Conv2d(mid, channels, 1), nn.BatchNorm2d(channels),
                                  nn.Sigmoid())
    self.post = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels),
                              nn.ReLU(True))

  def forward(self, xh, xl):
    return self.post(2 * xl * self.topdown(xh) + 2 * xh * self.bottomup(xl))


class ACMUNet(nn.Module):
  """b = `blocks`, channels (8, 16, 32, 64), non-tiny stem; 397,823 parameters for 1 channel."""

  def __init__(self, in_channels: int = 1, blocks: int = 3, channels=(8, 16, 32, 64)):
    super().__init__()
    c0, c1, c2, c3 = channels
    self.stem = nn.Sequential(nn.BatchNorm2d(in_channels), *_bn_relu_conv(in_channels, c0, 2),
                              *_bn_relu_conv(c0, c0), *_bn_relu_conv(c0, 2 * c0),
                              nn.MaxPool2d(3, 2, 1))
    self.layer1 = _stage(2 * c0, c1, blocks, 1)
    self.layer2 = _stage(c1, c2, blocks, 2)
    self.layer3 = _stage(c2, c3, blocks, 2)
    self.deconv2 = nn.ConvTranspose2d(c3, c2, 4, 2, 1)
    self.fuse2 = AsymBiChaFuse(c2)
    self.uplayer2 = _stage(c2, c2, blocks, 1)
    self.deconv1 = nn.ConvTranspose2d(c2, c1, 4, 2, 1)
    self.fuse1 = AsymBiChaFuse(c1)
    self.uplayer1 = _stage(c1, c1, blocks, 1)
    self.head = nn.Module()
    self.head.block = nn.Sequential(*_bn_relu_conv(c1, c1 // 4), nn.Dropout(0.1),
                                    nn.Conv2d(c1 // 4, 1, 1))

  def forward(self, x):
    c1 = self.layer1(self.stem(x))
    c2 = self.layer2(c1)
    c3 = self.layer3(c2)
    f2 = self.uplayer2(self.fuse2(self.deconv2(c3), c2))
    f1 = self.uplayer1(self.fuse1(self.deconv1(f2), c1))
    return F.interpolate(self.head.block(f1), size=x.shape[2:], mode="bilinear",
                         align_corners=False)
