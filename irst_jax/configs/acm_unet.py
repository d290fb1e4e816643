"""ACM-U-Net (b = 3, channels 8-16-32-64, 397,823 parameters) with the BasicIRSTD recipe.

Run:   python -m irst_jax.main --config=acm_unet --workdir=runs/acm_unet
       NUAA-SIRST 50_50, 400 epochs: 1 h 51 min on the shared 2-core CPU machine, IoU 0.6700 /
       nIoU 0.6600 / Pd 0.8897 / Fa 46.72e-6 on the 214 test images (one seed); with gamma 0.5
       (`--config.optim.gamma=0.5`, the recipe before its correction) IoU 0.6948 / Pd 0.9163
       (experiments/results/acm_unet_nuaa_sirst.md).
       `:nudt_sirst`, `:mdvsfa_cgan`: not yet run to the end (20 epochs each:
       experiments/results/acm_unet_20_epochs.md).
Smoke: python -m irst_jax.main --config=acm_unet:nuaa_sirst,smoke --workdir=/tmp/smoke

Recipe (BasicIRSTD, XinyiYing/BasicIRSTD, train.py): grey input, 256x256 crops, batch 16,
Adam 5e-4, MultiStepLR [200, 300] x 0.1 (train.py's Adam branch sets milestones [200, 300]
and gamma 0.1, overriding its argparse default gamma 0.5), 400 epochs, soft-IoU, threshold
0.5, seed 42, NUAA-SIRST 50_50.
The ACM paper's own recipe (Nesterov SGD 0.05, batch 8, 300 epochs, crop 480, idx_427 split)
is `--config.optim.optimizer=sgd --config.optim.learning_rate=0.05 ...`.
"""
from __future__ import annotations

from irst_jax.configs import default


def get_config(arg: str | None = None):
  config = default.get_base_config()
  config.model.name = "acm_unet"
  config.model.channels = (8, 16, 32, 64)
  config.model.num_blocks = 3
  config.model.fusion = "asym_bi"   # or bi_local, bi_global, top_down_local, top_down_global
  config.model.tiny = False
  config.model.head_dropout = 0.1
  config.optim.gamma = 0.1          # BasicIRSTD train.py: MultiStepLR(milestones=[200, 300], gamma=0.1)
  return default.apply_arg(config, arg)
