"""Model registry: config name -> Flax module.

Every model maps NHWC input [N, H, W, C_in] to logits [N, H, W, 1] (or, for deep supervision,
a tuple of such maps whose last is the prediction).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import ml_collections

from irst_jax.models import acm, cgranet, daea, dnanet, eaau_net

#: config.model.name -> the Flax module class of that paper's network.
MODELS: dict[str, type[nn.Module]] = {
    "acm_unet": acm.ACMUNet,      # ACM (Dai et al., WACV 2021), irst_jax/configs/acm_unet.py
    "acm_fpn": acm.ACMFPN,        # irst_jax/configs/acm_fpn.py
    "eaau_net": eaau_net.EAAUNet,  # EAAU-Net (Remote Sensing 2021), irst_jax/configs/eaau_net.py
    "dnanet": dnanet.DNANet,      # DNA-Net (TIP 2022), irst_jax/configs/dnanet.py
    "cgranet": cgranet.CGRANet,   # CGRANet (JSTARS 2023), irst_jax/configs/cgranet.py
    "daea": daea.DAEA,            # DAEA (Sci. Rep. 2023), irst_jax/configs/daea.py
}

#: Fields of `config.model` that are not module fields.
_NOT_MODULE_FIELDS = ("name", "in_channels")


@dataclasses.dataclass(frozen=True)
class PretrainedBackbone:
  """A model's backbone that pretrained weights may initialise: the file that the config field
  `model.<field>` names ('' = none) replaces the variables at `prefix` (every collection),
  converted by `converter` (a key of `irst_jax.convert.BACKBONE_LOADERS`). Loaded after
  `init`, outside the compiled function (`train.create_train_state`); the module reads no
  file and `field` is not one of its fields."""
  field: str
  prefix: tuple[str, ...]
  converter: str


#: config.model.name -> its pretrained backbone (models not listed have none).
PRETRAINED_BACKBONES: dict[str, PretrainedBackbone] = {
    "cgranet": PretrainedBackbone("backbone_weights", ("backbone",), "res2net_v1b"),
}


def pretrained_backbone(config: ml_collections.ConfigDict
                        ) -> Optional[tuple[PretrainedBackbone, str]]:
  """(the model's `PretrainedBackbone`, the weight file's path) when the `model` config
  section `config` names a file for it, else None."""
  backbone = PRETRAINED_BACKBONES.get(config.name)
  path = config.get(backbone.field, "") if backbone else ""
  return (backbone, str(path)) if path else None


def create_model(config: ml_collections.ConfigDict, axis_name: Optional[str] = None) -> nn.Module:
  """The model named `config.name`, built the same way for every model: each field of the
  `model` config section but `name`, `in_channels` (read from the input) and a pretrained
  backbone's weight file (`PRETRAINED_BACKBONES`) is the module field of the same name (lists
  become tuples); `axis_name` for synchronised BatchNorm.

  Raises:
    ValueError: an unknown model (listing the known ones), or a config field the model does
      not have (naming it and the model's fields).
  """
  if config.name not in MODELS:
    raise ValueError(f"unknown model {config.name!r}; expected one of {sorted(MODELS)}")
  cls = MODELS[config.name]
  skipped = _NOT_MODULE_FIELDS
  if config.name in PRETRAINED_BACKBONES:
    skipped += (PRETRAINED_BACKBONES[config.name].field,)
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()
            if k not in skipped}
  known = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "axis_name"}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"model.{unknown[0]} is not a field of {config.name!r} "
                     f"({cls.__name__}); its fields: {', '.join(sorted(known))}")
  return cls(**fields, axis_name=axis_name)


def final_logits(outputs):
  """The prediction map of a model's outputs (the last map under deep supervision)."""
  return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
