"""ACM-U-Net (b = 3, channels 8-16-32-64, 397,823 parameters) with the BasicIRSTD recipe.

Recipe (REFERENCE.md §3): grey input, 256x256 crops, batch 16, Adam 5e-4, MultiStepLR
[200, 300] x 0.5, 400 epochs, soft-IoU, threshold 0.5, seed 42, NUAA-SIRST 50_50.
The ACM paper's own recipe (Nesterov SGD 0.05, batch 8, 300 epochs, crop 480, idx_427 split)
is `--config.optim.optimizer=sgd --config.optim.learning_rate=0.05 ...`.

Run:   python -m irst_jax.main --config=configs/acm_unet.py --workdir=runs/acm_unet
Smoke: python -m irst_jax.main --config=configs/acm_unet.py:nuaa_sirst,smoke --workdir=/tmp/smoke
Cost and result on the 2-core CPU machine: see experiments/results/acm_unet_nuaa_sirst.md.
"""
from irst_jax.configs import default


def get_config(arg: str | None = None):
  config = default.get_base_config()
  config.model.name = "acm_unet"
  config.model.channels = (8, 16, 32, 64)
  config.model.num_blocks = 3
  config.model.fusion = "asym_bi"   # or bi_local, bi_global, top_down_local, top_down_global
  config.model.tiny = False
  config.model.head_dropout = 0.1
  return default.apply_arg(config, arg)
