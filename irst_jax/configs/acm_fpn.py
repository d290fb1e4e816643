"""ACM-FPN (b = 3, channels 8-16-32-64, 289,823 parameters): the ACM-U-Net recipe with the
FPN host (bilinear upsampling, "Reduce" fuses, no decoder blocks).

Run: python -m irst_jax.main --config=acm_fpn --workdir=runs/acm_fpn
     Not yet run to the end (no run recorded in experiments/results/).
"""
from __future__ import annotations

from irst_jax.configs import acm_unet


def get_config(arg: str | None = None):
  config = acm_unet.get_config(arg)
  config.model.name = "acm_fpn"
  return config
