"""Shared defaults of every config; model files override what differs.

A config file's `get_config(arg)` takes a comma-separated argument: a dataset name
(`nuaa_sirst`, the default; `nudt_sirst`; `mdvsfa_cgan`) and optionally `smoke`, a one-minute
run with tiny sizes for trying a config and for the tests, e.g.
`--config=acm_unet:nudt_sirst` or `--config=acm_unet:nuaa_sirst,smoke`.
The dataset sets the per-dataset defaults of `DATASET_DEFAULTS` (builder config, splits,
crop size, and epochs where a paper gives them for that dataset); `smoke` is applied after it.
Any value can be overridden on the command line: `--config.train.num_epochs=5`.
"""
from __future__ import annotations

from typing import Callable, Mapping

import ml_collections

from irst_jax.data import pipeline

DATASETS = ("nuaa_sirst", "nudt_sirst", "mdvsfa_cgan")

#: Per-dataset overrides applied by `apply_arg`, as {config section: {field: value}}.
#: - NUAA-SIRST / NUDT-SIRST: the DNA-Net / BasicIRSTD 50_50 split, 256 x 256 crops.
#: - MDvsFA-cGAN: builder config 'official' (train 9,978 / test 100; the DAEA halves are the
#:   splits 'train_half' / 'val_half'), 128 x 128 crops (the training images' size), and
#:   50 epochs (DAEA, Sci. Rep. 2023, "Training details"). Epochs / batch size otherwise stay
#:   the model config's; note that a multistep schedule's milestones are in epochs and are not
#:   rescaled (with 50 epochs, milestones (200, 300) never fire).
DATASET_DEFAULTS = {
    "nuaa_sirst": {"dataset": dict(builder_config="50_50", crop_size=256,
                                   train_split="train", eval_split="test")},
    "nudt_sirst": {"dataset": dict(builder_config="50_50", crop_size=256,
                                   train_split="train", eval_split="test")},
    "mdvsfa_cgan": {"dataset": dict(builder_config="official", crop_size=128,
                                    train_split="train", eval_split="test"),
                    "train": dict(num_epochs=50)},
}


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = ""
  config.model.in_channels = 1

  # name, builder_config ('50_50' or 'acm' for NUAA-SIRST, '50_50' for NUDT-SIRST, 'official'
  # for MDvsFA-cGAN), data_dir, manual_dir, splits,
  # normalization ('dataset' or 'basicirstd'), crop_size, center_on_target_prob, augment,
  # pad_multiple, max_eval_canvases (at most this many padded shapes, i.e. compilations of the
  # metrics, per evaluated split; default 4), eval_network_padding ('own': the network on each
  # image's own padded size, the published protocol; 'canvas': on the canvas, fewer compilations,
  # numbers move a little), shuffle: see irst_jax/data/pipeline.py; training crops and
  # augmentation run on the device: irst_jax/data/device_data.py.
  config.dataset = pipeline.default_dataset_config()

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 16              # global batch over all local devices
  config.train.num_epochs = 400
  config.train.seed = 42
  # Independent replicas trained in one compiled program (jax.vmap over parameters, optimiser
  # state, BatchNorm statistics and RNG): replica i uses seed train.seed + i (initialisation,
  # dropout, data order). Metrics: the mean over replicas under the usual keys, KEY_std and
  # KEY/seed_i; the best checkpoint is chosen by mean IoU. 1: a plain run (see irst_jax/train.py).
  config.train.num_seeds = 1
  config.train.loss = "soft_iou"            # 'soft_iou' or 'bce'
  config.train.eval_every_epochs = 10
  config.train.checkpoint_every_epochs = 1   # asynchronous saves (Orbax)
  # Training steps run in one dispatch (a lax.scan on the device), capped at the epoch's steps:
  # an epoch runs as chunks of this many steps and one shorter remainder chunk (at most two
  # compiled programs). Larger amortises the host's round trip; the loss comes back, and the
  # time limit is checked, once a dispatch. 0: 16 on GPU / TPU, 1 on CPU (where a scanned
  # step runs slower; see train.steps_per_dispatch).
  config.train.steps_per_dispatch = 0
  config.train.log_every_steps = 50
  config.train.keep_checkpoints = 2
  config.train.time_limit_minutes = 0.0     # > 0: stop (checkpoint + eval) after the step
                                            # past this wall time; rerun resumes at that step

  config.optim = ml_collections.ConfigDict()
  config.optim.optimizer = "adam"           # adagrad | sgd | adam | adamw (PyTorch semantics)
  config.optim.learning_rate = 5e-4
  config.optim.weight_decay = 0.0
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.schedule = "multistep"       # constant | multistep | cosine | poly (per epoch)
  config.optim.milestones = (200, 300)      # epochs
  config.optim.gamma = 0.5
  config.optim.min_lr = 0.0
  config.optim.power = 0.9

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 1                # images per device; images grouped by canvas
  config.eval.threshold = 0.5               # on sigmoid probabilities
  config.eval.distance_threshold = 3.0      # Pd centroid distance, pixels
  config.eval.max_targets = 32              # true targets per image handled by Pd matching
  config.eval.max_pixels = 1024             # fast compacted labelling capacity (dense beyond)
  config.eval.num_bins = 256                # score histogram bins of the pixel ROC / PR curves
  config.eval.roc_thresholds = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
  config.eval.grid_images = 8               # --mode=eval qualitative grid: first N test images
  config.eval.protocol = "basicirstd"       # | basicirstd_2023 | dnanet: evaluation/protocols.py
  config.eval.tta = "none"                  # | flips | flips_transpose: evaluation/tta.py
  return config


def apply_arg(config: ml_collections.ConfigDict, arg: str | None,
              recipes: dict | None = None,
              options: Mapping[str, Callable[[ml_collections.ConfigDict], None]] | None = None
              ) -> ml_collections.ConfigDict:
  """Applies a config argument 'dataset[,smoke][,option...]', the one grammar of every config's
  `get_config(arg)`.

  The dataset (the argument's, else `config.dataset.name`) gets its `DATASET_DEFAULTS`, then
  the model's own recipe for that dataset (`recipes`: {dataset: {section: {field: value}}},
  e.g. a paper's split and crop size), then the model's named `options` the argument gives
  ({part: function(config) setting fields in place}, e.g. DNA-Net's `pretrained_rgb`), then
  `smoke` (whatever the order of the parts); at most one dataset may be given.

  Raises:
    ValueError: a part that is none of these (naming it and the accepted ones), or several
      datasets.
  """
  options = dict(options or {})
  parts = [p for p in (arg or "").split(",") if p]
  unknown = [p for p in parts if p not in DATASETS and p != "smoke" and p not in options]
  if unknown:
    words = ("one of " if options else "") + ", ".join(repr(p) for p in ("smoke", *options))
    raise ValueError(f"unknown config argument {unknown[0]!r}; expected a dataset "
                     f"({', '.join(DATASETS)}) or {words}")
  datasets = [p for p in parts if p in DATASETS]
  if len(datasets) > 1:
    raise ValueError(f"config argument names several datasets: {datasets}")
  if datasets:
    config.dataset.name = datasets[0]
  for overrides in (DATASET_DEFAULTS[config.dataset.name],
                    (recipes or {}).get(config.dataset.name, {})):
    for section, values in overrides.items():
      for key, value in values.items():
        config[section][key] = value
  for name, apply in options.items():
    if name in parts:
      apply(config)
  if "smoke" in parts:
    config.train.num_epochs = 2
    config.train.batch_size = 4
    config.train.eval_every_epochs = 1
    config.train.log_every_steps = 1
    config.dataset.crop_size = 64
    config.optim.milestones = (1,)
    config.dataset.eval_network_padding = "canvas"   # at most 4 programs; numbers move a little
  return config
