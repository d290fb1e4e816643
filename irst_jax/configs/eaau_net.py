"""EAAU-Net (Zhang et al., Remote Sensing 2021): U-Net host, ResNet-20 backbone of its Table 1
(16-32-64 channels, b blocks a stage, full resolution in stage 1, stride 2 only at the first
conv of stages 2 and 3), EAA module (eq. 9) at each skip fusion, FCN head.

Run:   python -m irst_jax.main --config=eaau_net --workdir=runs/eaau_net
       Not yet run to the end: 4 of 300 epochs (with `--config.dataset.crop_size=256`) in
       33 min on the 2-core CPU machine (shared), IoU 0.3652 / nIoU 0.3469 / Pd 0.6422 /
       Fa 38.06e-6 on the 86 `acm` test images (experiments/results/eaau_net_daea_nuaa_short.md).
Smoke: python -m irst_jax.main --config=eaau_net:nuaa_sirst,smoke --workdir=/tmp/s

Recipe (paper Sec. 4.1): soft-IoU, AdaGrad lr 0.05, weight decay 1e-4, batch 8, random 480x480
crops, 300 epochs, NUAA-SIRST 5:2:3 split (builder config 'acm'). The paper names no schedule
(constant here). Crops are 448 here, not 480: the paper's crops come from the open-acm loader,
which first rescales each image at random (base size 512, x0.5-2.0); our pipeline does not
rescale, and the longest NUAA-SIRST training image has 456 px, so 448 (the largest multiple of
32 that fits) is the closest crop (`--config.dataset.crop_size`). Choices the paper leaves open,
all config fields: b = 3 (`model.num_blocks`, the standard ResNet-20), SA groups 4
(`model.sa_groups`), no conv after the EAA sum. Ablations of Fig. 8:
`--config.model.fusion=blam|tgam|single_sa|only_baa|only_sa`.
"""
from __future__ import annotations

from irst_jax.configs import default


def get_config(arg: str | None = None):
  config = default.get_base_config()
  config.model.name = "eaau_net"
  config.model.channels = (8, 16, 32, 64)   # stem 2 x 8 = 16 (Table 1 Conv-1), stages 16-32-64
  config.model.num_blocks = 3
  config.model.fusion = "eaa"
  config.model.tiny = True
  config.model.head_dropout = 0.1
  config.model.sa_groups = 4
  config.train.batch_size = 8
  config.train.num_epochs = 300
  config.optim.optimizer = "adagrad"
  config.optim.learning_rate = 0.05
  config.optim.eps = 1e-10
  config.optim.weight_decay = 1e-4
  config.optim.schedule = "constant"
  recipe = {"nuaa_sirst": {"dataset": {"builder_config": "acm", "crop_size": 448}}}
  return default.apply_arg(config, arg, recipe)
