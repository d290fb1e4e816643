"""CGRANet (Zhong, Zhang and Duan, "Context-Guided Reverse Attention Network With Multiscale
Aggregation for Infrared Small Target Detection", IEEE JSTARS 2023). No public code: built
from the paper and the published designs it names (PraNet and CaraNet: Res2Net backbone,
parallel partial decoder, axial + reverse attention; CGNet's context-guided block).

Structure (Sec. III-A, Fig. 1):
- Backbone: Res2Net-50 v1b 26w x 4s (`res2net.Res2NetV1b`, ref. [41]); its stage outputs
  Res2, Res3, Res4 (torch layer2..4) at strides 8, 16, 32 are used.
- CGM (Sec. III-B, Fig. 2, `context_attention.ContextGuidedBlock`, CGNet's block) on each of
  them, `channels` wide (`cgm2`, `cgm3`, `cgm4`).
- MAB (Sec. III-C, Fig. 3, `MultiscaleAggregation`): the parallel partial decoder of CPD [43]
  as PraNet uses it (Up, C_up, elementwise products, concatenations) on the three high-level
  features, giving the global map (logits) at stride 8 (`mab`).
- RAM (Sec. III-D, Fig. 4, `context_attention.ReverseAttention`) from coarse to fine: RAM3 on
  CGM4 with the global map resized to stride 32, RAM2 on CGM3 with RAM3's map upsampled to
  stride 16, RAM1 on CGM2 with RAM2's map at stride 8 (`ram3`, `ram2`, `ram1`).
- Outputs (deep supervision, every intermediate map): (global map, RAM3, RAM2, RAM1), each
  bilinearly resized to the input size; the last is the prediction (`models.final_logits`).

Choices the paper leaves open, all fields (and `config.model` entries,
irst_jax/configs/cgranet.py):
- `channels` (32, PraNet / CaraNet's decoder width): the CGM output width (Sec. III-B gives
  none; the entry conv halves it, see ContextGuidedBlock);
- `cgm_dilation` (3, given by Sec. III-B), `cgm_reduction` (16, CGNet's f_global ratio);
- `mab_input` (Sec. III-C, Fig. 1 wiring): 'cgm' (default), the MAB aggregates the CGM
  outputs; 'features', it aggregates its own 1x1 conv-BN-ReLU reductions of Res2-Res4
  (`reduce2`..`reduce4`, the CaraNet wiring where the decoder and the refinement branches
  take separate paths);
- `attention_reduction` (8), `attention_scaled` (True, eq. 1's 1 / sqrt(d_K)),
  `attention_gamma_init` (0) of the axial attention; `refine_layers` (2) of each RAM;
- `align_corners` (False): the bilinear resampling mode (PraNet mixes both);
- the backbone's size: `num_blocks` (3, 4, 6, 3), `base_width` (26), `scale` (4),
  `stem_width` (32), `base_planes` (64); smaller values give the fast models of the tests;
- `model.backbone_weights` (a config field, not a module field: the module reads no file):
  '' trains from scratch (the default here; the paper starts from ImageNet weights, which no
  hub here can supply); a path to a `.pth` / `.npz` state_dict of the widely used
  `Res2Net_v1b` (e.g. res2net50_v1b_26w_4s) is loaded into `backbone` after `init`, outside
  the compiled function, by `train.create_train_state` (`models.PRETRAINED_BACKBONES`,
  `convert.load_pretrained`; the classifier `fc.*` is dropped, an RGB stem is summed over
  its input channels for grey input).
- The L2 term of the unite loss (eq. 2) is the optimiser's weight decay
  (irst_jax/configs/cgranet.py).

Input: NHWC [N, H, W, C_in], H and W multiples of 32. Output: a tuple of four logit maps
[N, H, W, 1]. Parameters (Res2Net-50 v1b, channels 32, grey input): 24,082,808, of which
the backbone 23,668,776 and the decoder (CGMs, MAB, RAMs) 414,032. The paper reports 26.12 M:
adding the 2,049,000 parameters of the ImageNet classifier (fc 2048 -> 1000), which a
PyTorch model holding the whole pretrained Res2Net counts although it never uses them, gives
26,131,808 (+0.05 %).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from irst_jax.models import context_attention, layers, res2net


class MultiscaleAggregation(nn.Module):
  """Multiscale aggregation block (CGRANet Sec. III-C, Fig. 3): CPD's partial decoder [43]
  as PraNet's `aggregation`.

  Call with x4, x3, x2 [N, h, w, C] at strides 32, 16, 8 (h, w of x2). With C_up = 3x3 conv
  (no bias) + BN (PraNet's BasicConv2d, no ReLU) and Up = bilinear resize to the next level:
    x3' = C_up1(Up x4) * x3;  x2' = C_up2(Up Up x4) * C_up3(Up x3) * x2;
    x3'' = C_cat2([x3', C_up4(Up x4)]) (2C);  x2'' = C_cat3([x2', C_up5(Up x3'')]) (3C);
    global map = conv1x1(C_4(x2'')) (bias) -> [N, h, w, 1] logits.
  Up Up x4 is one resize to x2's size.
  """
  channels: int
  align_corners: bool = False
  norm: layers.ModuleDef = nn.BatchNorm

  @nn.compact
  def __call__(self, x4: jax.Array, x3: jax.Array, x2: jax.Array) -> jax.Array:
    c = self.channels
    up = lambda t, like: layers.resize_bilinear(t, like.shape[1:3], self.align_corners)

    def conv_bn(name: str, t: jax.Array, features: int = c) -> jax.Array:
      return self.norm(name=f"{name}_bn")(layers.conv(features, 3, name=f"{name}_conv")(t))

    x3_1 = conv_bn("conv_upsample1", up(x4, x3)) * x3
    x2_1 = conv_bn("conv_upsample2", up(x4, x2)) * conv_bn("conv_upsample3", up(x3, x2)) * x2
    x3_2 = conv_bn("conv_concat2", jnp.concatenate(
        [x3_1, conv_bn("conv_upsample4", up(x4, x3))], axis=-1), 2 * c)
    x2_2 = conv_bn("conv_concat3", jnp.concatenate(
        [x2_1, conv_bn("conv_upsample5", up(x3_2, x2), 2 * c)], axis=-1), 3 * c)
    x = conv_bn("conv4", x2_2, 3 * c)
    return layers.Conv(1, (1, 1), kernel_init=layers.he_normal, name="conv5")(x)


class CGRANet(nn.Module):
  """CGRANet; structure, options (with the paper sections they fill in) and shapes in the
  module docstring. `axis_name`: synchronised BatchNorm under pmap."""
  channels: int = 32
  cgm_dilation: int = 3
  cgm_reduction: int = 16
  mab_input: str = "cgm"
  attention_reduction: int = 8
  attention_scaled: bool = True
  attention_gamma_init: float = 0.0
  refine_layers: int = 2
  align_corners: bool = False
  num_blocks: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 26
  scale: int = 4
  stem_width: int = 32
  base_planes: int = 64
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
    if x.ndim != 4 or x.shape[1] % 32 or x.shape[2] % 32:
      raise ValueError(f"CGRANet expects NHWC input with H and W multiples of 32, got shape "
                       f"{x.shape}")
    if self.mab_input not in ("cgm", "features"):
      raise ValueError(f"CGRANet mab_input must be 'cgm' or 'features', got {self.mab_input!r}")
    norm = layers.batch_norm(train, self.axis_name)
    _, f2, f3, f4 = res2net.Res2NetV1b(tuple(self.num_blocks), self.base_width, self.scale,
                                       self.stem_width, self.base_planes, norm,
                                       name="backbone")(x)
    features = {2: f2, 3: f3, 4: f4}
    cgm = {i: context_attention.ContextGuidedBlock(
        self.channels, self.cgm_dilation, self.cgm_reduction, norm, name=f"cgm{i}")(f)
        for i, f in features.items()}
    mab_in = cgm
    if self.mab_input == "features":
      mab_in = {i: nn.relu(norm(name=f"reduce{i}_bn")(
          layers.conv(self.channels, 1, name=f"reduce{i}_conv")(f))) for i, f in features.items()}
    global_map = MultiscaleAggregation(self.channels, self.align_corners, norm, name="mab")(
        mab_in[4], mab_in[3], mab_in[2])
    maps, coarse = [global_map], global_map
    for i in (4, 3, 2):
      coarse = layers.resize_bilinear(coarse, cgm[i].shape[1:3], self.align_corners)
      coarse = context_attention.ReverseAttention(
          self.refine_layers, self.attention_reduction, self.attention_scaled,
          self.attention_gamma_init, norm, name=f"ram{i - 1}")(cgm[i], coarse)
      maps.append(coarse)
    return tuple(layers.resize_bilinear(m, x.shape[1:3], self.align_corners) for m in maps)
