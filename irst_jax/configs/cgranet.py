"""CGRANet (Zhong et al., JSTARS 2023): Res2Net-50 v1b 26w x 4s backbone, context-guided
modules, multiscale aggregation, axial + reverse attention, four deep-supervision maps
(irst_jax/models/cgranet.py; 24,082,808 parameters with grey input, paper 26.12 M, see there).

Run:   python -m irst_jax.main --config=cgranet:mdvsfa_cgan --workdir=runs/cgranet
       Not yet run to the end: 40 min on one shared core of the 2-core CPU machine reached
       step 350 of 41,550 (IoU 0.0340; experiments/results/cgranet_mdvsfa_cgan_40min.md).
       python -m irst_jax.main --config=cgranet:nudt_sirst --workdir=runs/cgranet_nudt
       Not yet run to the end.
Smoke: python -m irst_jax.main --config=cgranet:mdvsfa_cgan,smoke --workdir=/tmp/s

Recipe (paper Sec. III-E and IV-A): unite loss 2 x IoU + 7 x BCE (`train.loss='unite'`, the
mean over the four maps) + 1 x L2, Adam lr 1e-4 with "poly" decay (power 0.9), batch 12,
128 x 128 inputs, MDvsFA-cGAN (the default here; the paper's "NUST-SIRST") or NUDT-SIRST.
Choices the paper leaves open, all config fields:
- the L2 term is Adam's coupled weight decay (`optim.weight_decay`, the gradient of
  (wd / 2) ||w||^2 times lambda_3 = 1), wd = 1e-4 (the paper gives no value);
- epochs: 50 on MDvsFA-cGAN (its dataset default, 41,550 steps of 12), 400 on NUDT-SIRST /
  NUAA-SIRST (the base default); the poly schedule steps once an epoch;
- training from scratch (`model.backbone_weights=''`): the paper starts from ImageNet
  weights; `--config.model.backbone_weights=/path/res2net50_v1b_26w_4s.pth` (or .npz) loads a
  PyTorch `Res2Net_v1b` state_dict into the backbone;
- the model's own options (`model.channels`, `mab_input`, ...): irst_jax/models/cgranet.py.
"""
from __future__ import annotations

from irst_jax.configs import default


def get_config(arg: str | None = None):
  config = default.get_base_config()
  config.model.name = "cgranet"
  config.model.channels = 32
  config.model.cgm_dilation = 3
  config.model.cgm_reduction = 16
  config.model.mab_input = "cgm"             # 'cgm' | 'features'
  config.model.attention_reduction = 8
  config.model.attention_scaled = True
  config.model.attention_gamma_init = 0.0
  config.model.refine_layers = 2
  config.model.align_corners = False
  config.model.num_blocks = (3, 4, 6, 3)     # Res2Net-50
  config.model.base_width = 26
  config.model.scale = 4
  config.model.stem_width = 32
  config.model.base_planes = 64
  config.model.backbone_weights = ""         # path to a Res2Net_v1b .pth / .npz, '' = scratch
  config.dataset.name = "mdvsfa_cgan"
  config.train.loss = "unite"
  config.train.batch_size = 12
  config.optim.optimizer = "adam"
  config.optim.learning_rate = 1e-4
  config.optim.weight_decay = 1e-4
  config.optim.schedule = "poly"
  config.optim.power = 0.9
  crop = {"dataset": {"crop_size": 128}}
  return default.apply_arg(config, arg, {name: crop for name in default.DATASETS})
