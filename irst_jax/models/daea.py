"""DAEA (Lin et al., "Deep asymmetric extraction and aggregation for infrared small target
detection", Scientific Reports 2023).

Structure (paper Fig. 1 and eq. 1; no public code exists for DAEA):
- Stem: input BN, conv3x3 to 2 * channels[0] + BN + ReLU at full resolution
  (`backbones.CifarStem(tiny=True)`, ACM's Table 1 "Conv-1"; the paper's Table 1 is not in
  the text, so the stem and all widths are choices, `channels`).
- Vertical extraction (Sec. "Network architecture", Table 1): three stages of S
  (`num_blocks`) AAM-blocks with channels[1:] channels, a 2x2 max-pool (stride 2) after every
  stage but the last: L^{0,0} = Ext(input), L^{0,j} = Ext(P_max(L^{0,j-1})).
- AAM-block (Sec. "Asymmetric attention for feature extraction"): a residual block extended
  with shuffle attention: conv3x3-BN-ReLU-conv3x3-BN, attention, + shortcut (1x1 conv + BN
  when the width changes), ReLU. The attention sits after the last BN before the residual add,
  as SA-Net places it (the paper does not say where); SA groups `sa_groups` (not given).
- Horizontal aggregation (eq. 1): L^{i,j} = Agg(L^{i-1,j}, U(L^{i-1,j+1})) until one
  full-resolution map L^{2,0} is left; U is bilinear (half-pixel centres, PyTorch's default;
  `align_corners` makes it corner-aligned). Agg is the ACM cross-attention of eqs. 4-5
  (global attention of the deep map on the shallow one, point-wise local attention of the
  shallow map on the deep one, r = 4, Z = X' + Y'): `attention.CrossLayerFusion` with
  `reduce_high=True`, i.e. as in ACM's reference implementation of the same equation
  (open-acm AsymBiChaFuseReduce, the FPN host that also upsamples bilinearly): the deep map is
  first mapped to the shallow width by a 1x1 conv-BN-ReLU (the paper's eqs. need equal widths
  and do not say how), the sum carries ACM's factor 2 and is followed by conv3x3-BN-ReLU.
- Predict module: ACM's FCN head (`layers.FCNHead`, dropout `head_dropout`), logits.

Ablations (paper Tables 4-5), all fields of `DAEA`:
- `extraction`: 'sa' (DAEA), 'none' (without SA), 'cbam' (CBAM channel then spatial
  attention, r = 16, 7x7), 'se' (squeeze-and-excitation, r = 16), 'sa_both_global' /
  'sa_both_local' (symmetric extraction: both SA halves global / local).
- `fusion`: 'asym_bi' (DAEA), 'direct_add' (without ACM: Z = X + U(Y), conv kept),
  'bi_global' / 'bi_local' (symmetric aggregation), or any `attention.FUSION_VARIANTS` name.
- `aggregation`: 'iterative' (DAEA, three Agg nodes) or 'unet' (U-Net skips: a decoder
  D^2 = L^{0,2}, D^j = Agg(L^{0,j}, U(D^{j+1}), the same Agg nodes, two of them).
- `num_blocks`: S (the paper varies 1 to 6; with S = 3 it already beats the compared methods,
  S = 5 is its best on NUAA-SIRST; default 3).

Input: NHWC [N, H, W, C_in] with H and W multiples of 2^(stages - 1) (4 for three stages).
Output: logits [N, H, W, 1] (sigmoid > 0.5 is the paper's prediction).
Parameters (1 input channel, channels (8, 16, 32, 64), SA groups 4): 97,075 + 97,300 (S - 1),
i.e. 291,675 for S = 3 (derived by hand in tests/test_daea.py); the paper gives no count in
its text.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

from irst_jax.models import attention, backbones, layers

#: extraction attention -> ShuffleAttention `branches` (None: not a shuffle attention)
EXTRACTION_ATTENTIONS = {
    "sa": "asym",
    "sa_both_global": "both_global",
    "sa_both_local": "both_local",
    "cbam": None,
    "se": None,
    "none": None,
}
AGGREGATIONS = ("iterative", "unet")


class AAMBlock(nn.Module):
  """DAEA's AAM-block: a residual block with the extraction attention `attention` (an
  `EXTRACTION_ATTENTIONS` name) after its last BN, NHWC [N, H, W, C_in] -> [N, H, W, features].

  conv3x3 `conv1` - BN `bn1` - ReLU - conv3x3 `conv2` - BN `bn2` - attention (`sa`, or `ca`
  and `sa_spatial` for CBAM, or `se`) + shortcut (identity, or 1x1 conv `shortcut_conv` + BN
  `shortcut_bn` when C_in != features), ReLU. Convolutions have no bias (He init).
  """
  features: int
  attention: str = "sa"
  sa_groups: int = 4
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(self.norm(name="bn1")(layers.conv(self.features, 3, name="conv1")(x)))
    y = self.norm(name="bn2")(layers.conv(self.features, 3, name="conv2")(y))
    branches = EXTRACTION_ATTENTIONS[self.attention]
    if branches is not None:
      y = attention.ShuffleAttention(self.sa_groups, branches=branches, name="sa")(y)
    elif self.attention == "cbam":
      y = y * attention.CBAMChannelAttention(16, name="ca")(y)
      y = y * attention.CBAMSpatialAttention(7, name="sa_spatial")(y)
    elif self.attention == "se":
      y = y * attention.SqueezeExcitation(16, name="se")(y)
    if x.shape[-1] != self.features:
      x = self.norm(name="shortcut_bn")(layers.conv(self.features, 1, name="shortcut_conv")(x))
    return nn.relu(y + x)


class DAEA(nn.Module):
  """DAEA; see the module docstring for the structure, the ablations, shapes and sources.

  Fields: `channels` = (stem width C0, giving 2 C0 stem channels, then one width a stage;
  default (8, 16, 32, 64): stages 16-32-64), `num_blocks` (S), `extraction`, `fusion`,
  `aggregation`, `sa_groups` (must divide half of every stage width), `head_dropout`,
  `align_corners` (of U), `axis_name` (synchronised BatchNorm under pmap).

  Raises ValueError for input that is not NHWC with H, W multiples of 2^(stages - 1), and for
  an unknown `extraction`, `aggregation` or `fusion` (the message lists the known ones).
  """
  channels: Sequence[int] = (8, 16, 32, 64)
  num_blocks: int = 3
  extraction: str = "sa"
  fusion: str = "asym_bi"
  aggregation: str = "iterative"
  sa_groups: int = 4
  head_dropout: float = 0.1
  align_corners: bool = False
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    multiple = 2 ** (len(self.channels) - 2)
    if x.ndim != 4 or x.shape[1] % multiple or x.shape[2] % multiple:
      raise ValueError(f"DAEA expects NHWC input with H and W multiples of {multiple}, got "
                       f"shape {x.shape}")
    if self.extraction not in EXTRACTION_ATTENTIONS:
      raise ValueError(f"unknown DAEA extraction {self.extraction!r}; expected one of "
                       f"{sorted(EXTRACTION_ATTENTIONS)}")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"unknown DAEA aggregation {self.aggregation!r}; expected one of "
                       f"{list(AGGREGATIONS)}")
    norm = layers.batch_norm(train, self.axis_name)
    x = backbones.CifarStem(self.channels[0], tiny=True, norm=norm, name="stem")(x)
    levels = []   # L^{0,j}
    for j, width in enumerate(self.channels[1:]):
      if j:
        x = layers.max_pool_2x2(x)
      for b in range(self.num_blocks):
        x = AAMBlock(width, self.extraction, self.sa_groups, norm, name=f"ext{j}_{b}")(x)
      levels.append(x)

    def agg(name: str, shallow: jax.Array, deep: jax.Array) -> jax.Array:
      up = layers.resize_bilinear(deep, shallow.shape[1:3], self.align_corners)
      return attention.CrossLayerFusion(shallow.shape[-1], self.fusion, reduce_high=True,
                                        norm=norm, name=name)(up, shallow)

    if self.aggregation == "iterative":   # eq. 1: node L^{i,j} is `agg{i}_{j}`
      for i in range(1, len(levels)):
        levels = [agg(f"agg{i}_{j}", levels[j], levels[j + 1]) for j in range(len(levels) - 1)]
      final = levels[0]
    else:                                 # U-Net skips: decoder node at level j is `skip{j}`
      final = levels[-1]
      for j in reversed(range(len(levels) - 1)):
        final = agg(f"skip{j}", levels[j], final)
    return layers.FCNHead(1, self.head_dropout, norm, name="head")(final, train)
