"""DNA-Net (Li et al., TIP 2022; REFERENCE.md §3) in PyTorch, NCHW, written from the paper and
our Flax port `irst_jax/models/dnanet.py` (see its docstring for the structure).

Benchmark baseline only. Layout and state_dict names are those of
../shared/golden/dnanet.npz; `tests/test_torch_reference.py` loads that file, reproduces
its four logit maps within 1e-4 and checks the parameter counts (4,696,568 with 1 input
channel, 4,696,888 with 3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
  """CBAM M_c = sigmoid(MLP(avgpool x) + MLP(maxpool x)), MLP = 1x1 convs C -> C//16 -> C."""

  def __init__(self, channels: int, reduction: int = 16):
    super().__init__()
    self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
    self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

  def forward(self, x):
    mlp = lambda v: self.fc2(F.relu(self.fc1(v)))
    return torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))


class SpatialAttention(nn.Module):
  """CBAM M_s = sigmoid(conv7x7([mean_c x, max_c x]))."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)

  def forward(self, x):
    return torch.sigmoid(self.conv1(torch.cat([x.mean(1, keepdim=True),
                                               x.amax(1, keepdim=True)], 1)))


class ResCBAMBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, times M_c then M_s, + identity or conv1x1-BN shortcut, ReLU."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = None
    if cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))
    self.ca = ChannelAttention(cout)
    self.sa = SpatialAttention()

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    y = y * self.ca(y)
    y = y * self.sa(y)
    return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def _node(cin: int, cout: int, blocks: int) -> nn.Sequential:
  return nn.Sequential(ResCBAMBlock(cin, cout),
                       *[ResCBAMBlock(cout, cout) for _ in range(blocks - 1)])


def _resize(x, like):
  """Bilinear resampling (align_corners=True) of x to the spatial size of `like`."""
  return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class DNANet(nn.Module):
  """Nodes `conv{i}_{j}` (X^{i,j}), FPFM (`conv0_{i}_1x1`, `conv0_4_final`) and 1x1 heads.

  Input NCHW with H, W multiples of 16. Returns the list [final1(X^{0,1}), final2(X^{0,2}),
  final3(X^{0,3}), final4(X_final)] of logit maps (N, 1, H, W) with `deep_supervision`, in
  training and eval mode alike; otherwise the single map final(X_final).
  """

  def __init__(self, input_channels: int = 1, nb_filter=(16, 32, 64, 128, 256),
               num_blocks=(2, 2, 2, 2), deep_supervision: bool = True):
    super().__init__()
    nb = nb_filter
    self.deep_supervision = deep_supervision
    blocks = lambda i: 1 if i == 0 else num_blocks[i - 1]
    self.add_module("conv0_0", _node(input_channels, nb[0], 1))
    for i in range(1, 5):
      self.add_module(f"conv{i}_0", _node(nb[i - 1], nb[i], blocks(i)))
    for i in range(4):
      for j in range(1, 5 - i):
        # inputs: X^{i,0..j-1}, up(X^{i+1,j-1}) and, for i >= 1, down(X^{i-1,j})
        cin = j * nb[i] + nb[i + 1] + (nb[i - 1] if i else 0)
        self.add_module(f"conv{i}_{j}", _node(cin, nb[i], blocks(i)))
    for i in range(4, 0, -1):
      self.add_module(f"conv0_{i}_1x1", nn.Conv2d(nb[i], nb[0], 1))
    self.conv0_4_final = _node(5 * nb[0], nb[0], 1)
    heads = ("final1", "final2", "final3", "final4") if deep_supervision else ("final",)
    for name in heads:
      self.add_module(name, nn.Conv2d(nb[0], 1, 1))
    for m in self.modules():   # paper Sec. IV-B: Xavier weights, zero biases
      if isinstance(m, nn.Conv2d):
        nn.init.xavier_normal_(m.weight)
        if m.bias is not None:
          nn.init.zeros_(m.bias)

  def forward(self, x):
    X = [[None] * 5 for _ in range(5)]
    X[0][0] = self.conv0_0(x)
    for d in range(1, 5):   # anti-diagonals i + j = d: each node needs only earlier ones
      X[d][0] = getattr(self, f"conv{d}_0")(F.max_pool2d(X[d - 1][0], 2))
      for j in range(1, d + 1):
        i = d - j
        inputs = X[i][:j] + [_resize(X[i + 1][j - 1], X[i][0])]
        if i > 0:
          inputs.append(_resize(X[i - 1][j], X[i][0]))
        X[i][j] = getattr(self, f"conv{i}_{j}")(torch.cat(inputs, 1))
    pyramid = [_resize(getattr(self, f"conv0_{i}_1x1")(X[i][4 - i]), x) for i in (4, 3, 2, 1)]
    final = self.conv0_4_final(torch.cat(pyramid + [X[0][4]], 1))
    if self.deep_supervision:
      return [self.final1(X[0][1]), self.final2(X[0][2]), self.final3(X[0][3]),
              self.final4(final)]
    return self.final(final)
