"""Model registry: config name -> Flax module.

Every model maps NHWC input [N, H, W, C_in] to logits [N, H, W, 1] (or, for deep supervision,
a tuple of such maps whose last is the prediction).
"""
from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import ml_collections

from irst_jax.models import acm, cgranet, daea, dnanet


def _acm(cls) -> Callable[[ml_collections.ConfigDict, Optional[str]], nn.Module]:
  def build(config, axis_name):
    return cls(channels=tuple(config.channels), num_blocks=config.num_blocks,
               fusion=config.fusion, tiny=config.tiny, head_dropout=config.head_dropout,
               sa_groups=config.get("sa_groups", 4), axis_name=axis_name)
  return build


def _dnanet(config, axis_name):
  # empty nb_filter / num_blocks: the backbone's (dnanet.BACKBONES)
  return dnanet.DNANet(backbone=config.backbone, nb_filter=tuple(config.nb_filter) or None,
                       num_blocks=tuple(config.num_blocks) or None,
                       deep_supervision=config.deep_supervision, axis_name=axis_name)


def _cgranet(config, axis_name):
  # every config.model field but name / in_channels is a CGRANet field of the same name
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()
            if k not in ("name", "in_channels")}
  return cgranet.CGRANet(**fields, axis_name=axis_name)


def _daea(config, axis_name):
  return daea.DAEA(channels=tuple(config.channels), num_blocks=config.num_blocks,
                   extraction=config.extraction, fusion=config.fusion,
                   aggregation=config.aggregation, sa_groups=config.sa_groups,
                   head_dropout=config.head_dropout, align_corners=config.align_corners,
                   axis_name=axis_name)


MODELS = {
    "acm_unet": _acm(acm.ACMUNet),
    "acm_fpn": _acm(acm.ACMFPN),
    # EAAU-Net (Remote Sensing 2021): the ACM U-Net host with the paper's Table 1 layout
    # (tiny stem: full-resolution stage 1) and EAA fusions (configs/eaau_net.py).
    "eaau_net": _acm(acm.ACMUNet),
    "dnanet": _dnanet,   # DNA-Net (TIP 2022), configs/dnanet.py
    "cgranet": _cgranet,   # CGRANet (JSTARS 2023), configs/cgranet.py
    "daea": _daea,       # DAEA (Sci. Rep. 2023), configs/daea.py
}


def create_model(config: ml_collections.ConfigDict, axis_name: Optional[str] = None) -> nn.Module:
  """The model named `config.name` built from `config`; `axis_name` for synchronised BN.

  Raises ValueError naming an unknown model and listing the known ones.
  """
  if config.name not in MODELS:
    raise ValueError(f"unknown model {config.name!r}; expected one of {sorted(MODELS)}")
  return MODELS[config.name](config, axis_name)


def final_logits(outputs):
  """The prediction map of a model's outputs (the last map under deep supervision)."""
  return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
