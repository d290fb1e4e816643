"""DAEA (Lin et al., Scientific Reports 2023): backbone of AAM-blocks (residual block + shuffle
attention) in three stages of S blocks, iterative aggregation with ACM cross-attention, FCN
predict head; irst_jax/models/daea.py describes the structure and every choice.

Run:   python -m irst_jax.main --config=daea:nuaa_sirst --workdir=runs/daea
       (or :nudt_sirst, :mdvsfa_cgan)
       Not yet run to the end: 5 of 500 epochs on NUAA-SIRST in 34 min on the 2-core CPU
       machine (shared), IoU 0.5109 / nIoU 0.5436 / Pd 0.8532 / Fa 68.09e-6 on the 86 `acm`
       test images (experiments/results/eaau_net_daea_nuaa_short.md).
Smoke: python -m irst_jax.main --config=daea:nuaa_sirst,smoke --workdir=/tmp/smoke

Recipe (paper "Training details"): soft-IoU, Adagrad lr 0.05, batch 8, 256 x 256 input,
500 epochs on NUAA-SIRST, 400 on NUDT-SIRST, 50 on MDvsFA-cGAN, threshold 0.5. The paper names
no schedule and no weight decay (constant, 0 here). Data: NUAA-SIRST's 50/20/30 split is the
ACM one (builder config 'acm'); MDvsFA-cGAN trains on `train_half` (the paper halves the
training set into train / validation) and tests on the 100 test images, 128 x 128 crops (the
training images' size; the paper resizes to 256); NUDT-SIRST uses the 50_50 split (the paper
cuts 50/20/30, a split that is not published). The paper resizes inputs to 256 x 256; here
NUAA-SIRST / NUDT-SIRST train on random 256 x 256 crops and test at original size.
Model choices (config fields): `channels` (8, 16, 32, 64) (stem 16, stages 16-32-64),
`num_blocks` S = 3, `sa_groups` 4, `align_corners` False, `head_dropout` 0.1.
Ablations (Tables 4-5): `--config.model.extraction=none|cbam|se|sa_both_global|sa_both_local`,
`--config.model.fusion=direct_add|bi_global|bi_local`, `--config.model.aggregation=unet`,
`--config.model.num_blocks=1..6`.
"""
from __future__ import annotations

from irst_jax.configs import default

#: dataset -> {config section: {field: value}}: the paper's epochs and splits per dataset.
RECIPES = {
    "nuaa_sirst": {"dataset": {"builder_config": "acm"}, "train": {"num_epochs": 500}},
    "nudt_sirst": {"train": {"num_epochs": 400}},
    "mdvsfa_cgan": {"dataset": {"train_split": "train_half"}, "train": {"num_epochs": 50}},
}


def get_config(arg: str | None = None):
  config = default.get_base_config()
  config.model.name = "daea"
  config.model.channels = (8, 16, 32, 64)
  config.model.num_blocks = 3              # S
  config.model.extraction = "sa"           # sa | none | cbam | se | sa_both_global | sa_both_local
  config.model.fusion = "asym_bi"          # asym_bi | direct_add | bi_global | bi_local | ...
  config.model.aggregation = "iterative"   # iterative | unet
  config.model.sa_groups = 4
  config.model.head_dropout = 0.1
  config.model.align_corners = False
  config.train.batch_size = 8
  config.optim.optimizer = "adagrad"
  config.optim.learning_rate = 0.05
  config.optim.eps = 1e-10
  config.optim.weight_decay = 0.0
  config.optim.schedule = "constant"
  config.dataset.crop_size = 256
  config.eval.threshold = 0.5
  return default.apply_arg(config, arg, RECIPES)
