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
    "acm_unet": acm.ACMUNet,      # ACM (Dai et al., WACV 2021), configs/acm_unet.py
    "acm_fpn": acm.ACMFPN,        # configs/acm_fpn.py
    "eaau_net": eaau_net.EAAUNet,  # EAAU-Net (Remote Sensing 2021), configs/eaau_net.py
    "dnanet": dnanet.DNANet,      # DNA-Net (TIP 2022), configs/dnanet.py
    "cgranet": cgranet.CGRANet,   # CGRANet (JSTARS 2023), configs/cgranet.py
    "daea": daea.DAEA,            # DAEA (Sci. Rep. 2023), configs/daea.py
}

#: Fields of `config.model` that are not module fields.
_NOT_MODULE_FIELDS = ("name", "in_channels")


def create_model(config: ml_collections.ConfigDict, axis_name: Optional[str] = None) -> nn.Module:
  """The model named `config.name`, built the same way for every model: each field of the
  `model` config section but `name` and `in_channels` (read from the input) is the module
  field of the same name (lists become tuples); `axis_name` for synchronised BatchNorm.

  Raises:
    ValueError: an unknown model (listing the known ones), or a config field the model does
      not have (naming it and the model's fields).
  """
  if config.name not in MODELS:
    raise ValueError(f"unknown model {config.name!r}; expected one of {sorted(MODELS)}")
  cls = MODELS[config.name]
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()
            if k not in _NOT_MODULE_FIELDS}
  known = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "axis_name"}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"model.{unknown[0]} is not a field of {config.name!r} "
                     f"({cls.__name__}); its fields: {', '.join(sorted(known))}")
  return cls(**fields, axis_name=axis_name)


def final_logits(outputs):
  """The prediction map of a model's outputs (the last map under deep supervision)."""
  return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
