"""Shared defaults of every config; model files override what differs.

A config file's `get_config(arg)` takes a comma-separated argument: a dataset name
(`nuaa_sirst`; the default) and optionally `smoke`, a one-minute run with tiny sizes for
trying a config and for the tests, e.g. `--config=configs/acm_unet.py:nuaa_sirst,smoke`.
Any value can be overridden on the command line: `--config.train.num_epochs=5`.
"""
from __future__ import annotations

import ml_collections

from irst_jax.data import pipeline

DATASETS = ("nuaa_sirst",)


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = ""
  config.model.in_channels = 1

  # name, builder_config ('50_50' or 'acm' for NUAA-SIRST), data_dir, manual_dir, splits,
  # normalization ('dataset' or 'basicirstd'), crop_size, center_on_target_prob, augment,
  # pad_multiple, num_workers, shuffle: see irst_jax/data/pipeline.py.
  config.dataset = pipeline.default_dataset_config()

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 16              # global batch over all local devices
  config.train.num_epochs = 400
  config.train.seed = 42
  config.train.loss = "soft_iou"            # 'soft_iou' or 'bce'
  config.train.eval_every_epochs = 10
  config.train.checkpoint_every_epochs = 1
  config.train.log_every_steps = 50
  config.train.keep_checkpoints = 2

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
  config.eval.batch_size = 1                # images per device; images are bucketed by size
  config.eval.threshold = 0.5               # on sigmoid probabilities
  config.eval.distance_threshold = 3.0      # Pd centroid distance, pixels
  config.eval.max_targets = 32              # true targets per image handled by Pd matching
  return config


def apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies a config argument 'dataset[,smoke]'. Raises ValueError for unknown parts."""
  parts = [p for p in (arg or "").split(",") if p]
  for part in parts:
    if part in DATASETS:
      config.dataset.name = part
    elif part == "smoke":
      config.train.num_epochs = 2
      config.train.batch_size = 4
      config.train.eval_every_epochs = 1
      config.train.log_every_steps = 1
      config.dataset.crop_size = 64
      config.optim.milestones = (1,)
    else:
      raise ValueError(f"unknown config argument {part!r}; expected a dataset "
                       f"({', '.join(DATASETS)}) or 'smoke'")
  return config
