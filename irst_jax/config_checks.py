"""Checks of a training config before a run writes anything, and of a resume against the
config a workdir was trained with.

`check_training_config` validates the whole config (model name and its named choices,
loss, optimiser and schedule, dataset name and splits of the prepared builder config,
thresholds, positive sizes and intervals, crop size, batch against devices) so that a typo
costs one line and leaves the workdir untouched: `train.train_and_evaluate` calls it before
it takes the workdir's lock or writes config.json. `check_resumable` refuses a resume whose
config changes what the saved training state depends on (batch size, optimiser, data...),
naming every such field; the safe ones (`SAFE_ON_RESUME`) may change.

Errors are `ConfigError` (an `errors.UserError`, a ValueError) with a one-line message
naming the field and value, e.g. `train.batch_size=0: expected an integer >= 1`.
"""
from __future__ import annotations

import json
import math
from typing import Any, Optional

import ml_collections
import numpy as np
from flax import traverse_util

from irst_jax import errors, losses, models, optim
from irst_jax.data import builders, pipeline
from irst_jax.evaluation import protocols, tta
from irst_jax.models import attention, daea, dnanet


class ConfigError(errors.UserError):
  """A config value is invalid or not allowed here; the message names the field."""


#: Named choices of each model's config fields, from the model modules' own tables.
_ACM_FUSIONS = sorted(attention.FUSION_VARIANTS)
_UNET_FUSIONS = _ACM_FUSIONS + sorted(attention.EAA_VARIANTS)   # U-Net hosts take EAA too
MODEL_CHOICES: dict[str, dict[str, list[str]]] = {
    "acm_unet": {"fusion": _UNET_FUSIONS},
    "eaau_net": {"fusion": _UNET_FUSIONS},
    "acm_fpn": {"fusion": _ACM_FUSIONS},
    "daea": {"fusion": _ACM_FUSIONS, "extraction": sorted(daea.EXTRACTION_ATTENTIONS),
             "aggregation": list(daea.AGGREGATIONS)},
    "dnanet": {"backbone": sorted(dnanet.BACKBONES)},
    "cgranet": {"mab_input": ["cgm", "features"]},
}

#: Fields that may differ from the saved config.json when a run resumes: they change what
#: is logged, evaluated, kept or where data is read, not the trained state or its schedule.
#: `train.num_epochs` is allowed separately (see `check_resumable`).
SAFE_ON_RESUME = (
    "eval.",   # every eval option (the whole section)
    "train.time_limit_minutes", "train.log_every_steps", "train.eval_every_epochs",
    "train.checkpoint_every_epochs", "train.keep_checkpoints", "train.steps_per_dispatch",
    "dataset.data_dir", "dataset.manual_dir", "dataset.pad_multiple",
    "dataset.max_eval_canvases", "dataset.eval_network_padding",
    # removed with the host training loader; still in the config.json of older workdirs
    "dataset.num_workers",
)

#: Fields added since older workdirs were saved, with the value their absence means (a resume
#: of such a workdir compares against it).
ADDED_FIELDS = {"train.num_seeds": 1}

#: Schedules that do not depend on `train.num_epochs` (multistep's milestones are epochs).
_EPOCH_FREE_SCHEDULES = ("constant", "multistep")


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)) and math.isfinite(float(value)))


def _field(config: ml_collections.ConfigDict, name: str) -> Any:
  section, key = name.split(".", 1)
  if section not in config or key not in config[section]:
    raise ConfigError(f"{name} is missing from the config")
  return config[section][key]


def _positive_int(config, name: str, minimum: int = 1) -> int:
  value = _field(config, name)
  if not _is_int(value) or value < minimum:
    raise ConfigError(f"{name}={value!r}: expected an integer >= {minimum}")
  return int(value)


def _probability(config, name: str, value: Any = None, closed: bool = False) -> float:
  value = _field(config, name) if value is None else value
  inside = _is_number(value) and (0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0)
  if not inside:
    raise ConfigError(f"{name}={value!r}: expected a number in {'[0, 1]' if closed else '(0, 1)'}")
  return float(value)


def _choice(config, name: str, known) -> Any:
  value = _field(config, name)
  if value not in known:
    raise ConfigError(f"{name}={value!r}: unknown; expected one of {', '.join(map(str, known))}")
  return value


def check_model(config: ml_collections.ConfigDict) -> None:
  """Model name (registry `models.MODELS`), input channels and the model's named choices."""
  _choice(config, "model.name", sorted(models.MODELS))
  _positive_int(config, "model.in_channels")
  for key, known in MODEL_CHOICES.get(config.model.name, {}).items():
    if key in config.model:
      _choice(config, f"model.{key}", known)


def check_eval(config: ml_collections.ConfigDict) -> None:
  """The eval section: threshold and ROC thresholds in (0, 1), positive sizes, a known
  protocol and test-time augmentation."""
  _probability(config, "eval.threshold")
  _positive_int(config, "eval.batch_size")
  for key in ("max_targets", "max_pixels", "num_bins"):
    if key in config.eval:
      _positive_int(config, f"eval.{key}")
  if "grid_images" in config.eval:
    _positive_int(config, "eval.grid_images", minimum=0)
  if "distance_threshold" in config.eval:
    value = config.eval.distance_threshold
    if not _is_number(value) or value <= 0:
      raise ConfigError(f"eval.distance_threshold={value!r}: expected a positive number of pixels")
  for value in config.eval.get("roc_thresholds", ()):
    _probability(config, "eval.roc_thresholds", value=value)
  if "protocol" in config.eval:
    _choice(config, "eval.protocol", sorted(protocols.PROTOCOLS))
  if "tta" in config.eval:
    _choice(config, "eval.tta", list(tta.TTA_MODES))


def check_split(config: ml_collections.ConfigDict, info: pipeline.DatasetInfo, field: str,
                split: Optional[str] = None) -> str:
  """`split` (default: the value of `field`, e.g. 'dataset.eval_split') is a split of the
  prepared builder config; returns it."""
  split = _field(config, field) if split is None else split
  if split not in info.num_examples:
    raise ConfigError(
        f"{field}={split!r}: {info.name}/{info.builder_config} has no such split; its splits "
        f"are {', '.join(sorted(info.num_examples))}")
  return split


def _check_optim(config: ml_collections.ConfigDict) -> None:
  lr = _field(config, "optim.learning_rate")
  if not _is_number(lr) or lr <= 0:
    raise ConfigError(f"optim.learning_rate={lr!r}: expected a positive number")
  try:
    optim.create_schedule(config.optim, 1, config.train.num_epochs)
  except ValueError as e:
    raise ConfigError(f"optim.schedule={config.optim.schedule!r}: {e}") from None
  try:
    optim.create_optimizer(config.optim, 1, config.train.num_epochs)
  except ValueError as e:
    raise ConfigError(f"optim.optimizer={config.optim.optimizer!r}: {e}") from None
  if config.optim.schedule == "multistep":
    milestones = list(config.optim.get("milestones", ()))
    if not all(_is_int(m) and m >= 0 for m in milestones):
      raise ConfigError(f"optim.milestones={tuple(milestones)!r}: expected epochs (integers >= 0)")


def check_training_config(config: ml_collections.ConfigDict, num_devices: int
                          ) -> pipeline.DatasetInfo:
  """Validates every field a training run uses; returns the dataset's `DatasetInfo`.

  `num_devices`: devices the global batch is split over (all processes' local devices).
  Reads (and, when absent, prepares) the TFDS dataset, but writes nothing into a workdir.

  Raises:
    ConfigError: the first invalid field, naming it, its value and what was expected.
    irst_jax.data.sources.DatasetNotFoundError: the dataset's files could not be found.
  """
  for section in ("model", "dataset", "train", "optim", "eval"):
    if section not in config:
      raise ConfigError(f"the config has no '{section}' section")
  check_model(config)
  train = config.train
  batch = _positive_int(config, "train.batch_size")
  if batch % num_devices:
    raise ConfigError(f"train.batch_size={batch}: not divisible by the {num_devices} devices; "
                      f"use a multiple of {num_devices}")
  _positive_int(config, "train.num_epochs")
  for key in ("eval_every_epochs", "checkpoint_every_epochs", "log_every_steps",
              "keep_checkpoints"):
    _positive_int(config, f"train.{key}")
  if "steps_per_dispatch" in train:   # absent from the saved configs of older runs
    _positive_int(config, "train.steps_per_dispatch", minimum=0)   # 0: by backend
  if "num_seeds" in train:   # absent from the saved configs of older runs: 1
    _positive_int(config, "train.num_seeds")
  if not _is_int(_field(config, "train.seed")):
    raise ConfigError(f"train.seed={train.seed!r}: expected an integer")
  limit = train.get("time_limit_minutes") or 0.0
  if not _is_number(limit) or limit < 0:
    raise ConfigError(f"train.time_limit_minutes={limit!r}: expected a number >= 0 (0: none)")
  _choice(config, "train.loss", sorted(losses.LOSSES))
  _check_optim(config)
  check_eval(config)

  dataset = config.dataset
  _choice(config, "dataset.name", sorted(builders.BUILDERS))
  crop = _field(config, "dataset.crop_size")
  if not _is_int(crop) or crop <= 0 or crop % 32:
    raise ConfigError(f"dataset.crop_size={crop!r}: expected a positive multiple of 32")
  _positive_int(config, "dataset.pad_multiple")
  try:
    pipeline.max_eval_canvases(dataset)
    pipeline.eval_network_padding(dataset)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _probability(config, "dataset.center_on_target_prob", closed=True)
  _choice(config, "dataset.normalization", list(pipeline._NORMALIZATIONS))
  try:
    pipeline.check_channels(dataset, config.model.in_channels)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  info = pipeline.dataset_info(dataset)
  train_split = check_split(config, info, "dataset.train_split")
  check_split(config, info, "dataset.eval_split")
  if batch > info.num_examples[train_split]:
    raise ConfigError(f"train.batch_size={batch}: exceeds the {info.num_examples[train_split]} "
                      f"training images of {info.name}/{info.builder_config} {train_split}")
  return info


def _safe(name: str) -> bool:
  return any(name == s or (s.endswith(".") and name.startswith(s)) for s in SAFE_ON_RESUME)


def check_resumable(saved: dict, config: ml_collections.ConfigDict, path: str) -> None:
  """Refuses to resume a run saved with config `saved` (config.json at `path`) under `config`
  when they differ in a field the trained state depends on.

  Safe changes: the `SAFE_ON_RESUME` fields, and `train.num_epochs` when the schedule does
  not depend on it (constant, multistep): training then continues to the new last epoch.
  With a cosine or poly schedule the learning rate of every step is a function of
  `train.num_epochs`, so changing it is refused. Model fields are checked first by
  `checkpoints.check_same_model`. A field present on one side only counts as changed
  unless the other side's value is None (an unset placeholder).

  Raises:
    ConfigError: naming every changed field with its saved and new value.
  """
  old = traverse_util.flatten_dict(saved, sep=".")
  new = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
  for name, value in ADDED_FIELDS.items():
    old.setdefault(name, value)
    new.setdefault(name, value)
  changed = []
  for name in sorted(set(old) | set(new)):
    # absent on one side and None (an unset placeholder) on the other: a field added since
    if old.get(name) == new.get(name) or _safe(name):
      continue
    if name == "train.num_epochs" and new.get("optim.schedule") in _EPOCH_FREE_SCHEDULES:
      continue
    changed.append(f"{name} ({old.get(name, '<absent>')!r} -> {new.get(name, '<absent>')!r})")
  if changed:
    why = (f"; optim.schedule={new.get('optim.schedule')!r} depends on train.num_epochs"
           if any(c.startswith("train.num_epochs ") for c in changed) else "")
    raise ConfigError(
        f"cannot resume the run in {path} with a changed {', '.join(changed)}: its checkpoints "
        f"were trained with the saved values{why}. Use the saved values (or only change "
        "eval.*, train.num_epochs with a constant or multistep schedule, intervals, time "
        "limit, data folders), or a new --workdir")
