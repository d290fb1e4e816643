"""EAAU-Net (Zhang, Cao, Zhang, Li, Chen, "EAAU-Net: Enhanced Asymmetric Attention U-Net for
Infrared Small Target Detection", Remote Sensing 13(16), 2021).

The ACM U-Net host (:class:`irst_jax.models.acm.ACMUNet`) with the paper's Table 1 layout: a
tiny stem (16 channels, stage 1 at full resolution, stride 2 only at the first convolution of
stages 2 and 3) and the enhanced asymmetric attention (EAA) module of eq. 9 at each skip fusion
(:mod:`irst_jax.models.attention`: bottom-up local and top-down global channel attention plus
shuffle attention with `sa_groups` groups). Input NHWC [N, H, W, C] with H, W multiples of 16;
output logits [N, H, W, 1]. Ablations of the paper's Fig. 8: `fusion` in 'blam', 'tgam',
'single_sa', 'only_baa', 'only_sa'.
"""
from __future__ import annotations

from irst_jax.models import acm


class EAAUNet(acm.ACMUNet):
  """EAAU-Net: ACM-U-Net with the tiny stem and EAA fusions by default (see the module doc)."""

  fusion: str = "eaa"
  tiny: bool = True
