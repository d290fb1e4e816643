"""DNA-Net-ResNet18 (nb_filter 16-32-64-128-256, 2-2-2-2 Res_CBAM blocks, deep supervision;
4,696,568 parameters with grey input) with the official recipe.

Run:   python -m irst_jax.main --config=dnanet --workdir=runs/dnanet
       Not yet run to the end. With `:nudt_sirst`, 40 min on one shared core of the 2-core CPU
       machine reached step 40 of epoch 1 of 1500 (0.27 images/s; IoU 0.1187):
       experiments/results/dnanet_nudt_sirst_40min.md.
Smoke: python -m irst_jax.main --config=dnanet:nuaa_sirst,smoke --workdir=/tmp/smoke
Official weights:
       python -m irst_jax.import_weights --config=dnanet:nudt_sirst,pretrained_rgb \
         --weights=FILE.pth.tar --workdir=runs/dnanet_official
       python -m irst_jax.main --mode=eval --workdir=runs/dnanet_official

Recipe (paper Sec. V-B; cosine floor 1e-5 from the official code,
YeRen123455/Infrared-Small-Target-Detection, train.py and model/parse_args_train.py): soft-IoU
averaged over the four deep-supervision maps (losses.get_loss takes the tuple; the last map is
the prediction), Adagrad lr 0.05 with PyTorch semantics (accumulator 0, eps 1e-10 outside the
root, irst_jax/optim.py), cosine annealing to 1e-5 over the run, batch 16, 256 x 256 crops, 1500
epochs (the paper's), 50_50 split (the DNA-Net split). Other backbones of the paper:
`--config.model.backbone=resnet10` (resnet34, resnet10_light, vgg10; see
irst_jax/models/dnanet.py for what each one is); `nb_filter` / `num_blocks` non-empty override
the backbone's widths / blocks per level.

Argument part `pretrained_rgb` (e.g. `--config=dnanet:nudt_sirst,pretrained_rgb`): the input
of the official PyTorch code, for its .pth.tar weights: 3 input channels and the
`imagenet_rgb` normalisation (grey replicated to RGB, /255, ImageNet mean/std; see
irst_jax/data/pipeline.py), i.e. `--config.model.in_channels=3
--config.dataset.normalization=imagenet_rgb`.
"""
from __future__ import annotations

from irst_jax.configs import default


def get_config(arg: str | None = None):
  config = default.get_base_config()
  config.model.name = "dnanet"
  config.model.backbone = "resnet18"   # resnet10 | resnet18 | resnet34 | resnet10_light | vgg10
  config.model.nb_filter = ()          # () = the backbone's (16, 32, 64, 128, 256)
  config.model.num_blocks = ()         # () = the backbone's (2, 2, 2, 2)
  config.model.deep_supervision = True
  config.train.num_epochs = 1500
  config.train.batch_size = 16
  config.optim.optimizer = "adagrad"
  config.optim.learning_rate = 0.05
  config.optim.eps = 1e-10
  config.optim.schedule = "cosine"
  config.optim.min_lr = 1e-5
  config.dataset.crop_size = 256
  # NUAA-SIRST / NUDT-SIRST keep these (50_50 split, 256 crops); MDvsFA-cGAN gets its dataset
  # defaults (128 crops, 50 epochs).
  return default.apply_arg(config, arg, options={"pretrained_rgb": _pretrained_rgb})


def _pretrained_rgb(config) -> None:
  """The official code's input (its train.py: RGB, ImageNet Normalize)."""
  config.model.in_channels = 3
  config.dataset.normalization = "imagenet_rgb"
