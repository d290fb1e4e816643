"""Orbax checkpoints of a workdir: `checkpoints/` (latest, keep N) and `best/` (best test IoU).

Layout of a workdir:
  config.json          the run's full config (written at start; compared on resume)
  normalization.json   the input normalisation it trained with: kind, mean, std (0..255
                       scale), dataset and builder config (written at start; used by
                       evaluation, export, predict and resumed training)
  checkpoints/<step>/  latest training states (params, batch_stats, opt_state, step, epoch, rng)
  best/<step>/         the state with the best evaluation IoU; best_metrics.json its metrics
  metrics.jsonl, train.log, tensorboard/

A workdir belongs to one model: resuming with a config whose model differs from the saved
config raises `WorkdirMismatchError` naming both, so a checkpoint is never overwritten by a
different network.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

CONFIG_FILE = "config.json"
BEST_METRICS_FILE = "best_metrics.json"
NORMALIZATION_FILE = "normalization.json"


class WorkdirMismatchError(ValueError):
  """The workdir holds a run of a different model (or model configuration)."""


class NormalizationMismatchError(ValueError):
  """The workdir trained with other input statistics than the config / dataset now give."""


def _to_host(tree: Any) -> Any:
  """Host numpy arrays, with each zero-size array replaced by a one-element placeholder.

  Orbax refuses zero-size arrays, which a model may legitimately hold (DNA-Net
  ResNet10-Light's CBAM MLP has 8 // 16 = 0 hidden channels, as PyTorch's Conv2d(8, 0)
  allows); `CheckpointStore.restore` puts the template's empty arrays back.
  """
  return jax.tree_util.tree_map(
      lambda x: np.zeros((1,), np.asarray(x).dtype) if np.size(x) == 0 else np.asarray(x), tree)


class CheckpointStore:
  """The latest and best checkpoints of one workdir.

  Args:
    workdir: the run directory.
    keep: number of latest checkpoints kept.
  """

  def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
    self.workdir = pathlib.Path(workdir).absolute()
    self.latest = ocp.CheckpointManager(
        self.workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self.best = ocp.CheckpointManager(
        self.workdir / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    self._best_metrics_path = self.workdir / BEST_METRICS_FILE

  def save_latest(self, step: int, state: dict) -> None:
    """Saves a host-side training state dict under `step` (blocking until written)."""
    self.latest.save(step, args=ocp.args.StandardSave(_to_host(state)), force=True)
    self.latest.wait_until_finished()

  def save_best(self, step: int, state: dict, metrics: dict[str, float]) -> bool:
    """Keeps `state` if its IoU beats the best so far. Returns True when it became the best."""
    previous = self.best_metrics()
    if previous is not None and previous["IoU"] >= metrics["IoU"]:
      return False
    self.best.save(step, args=ocp.args.StandardSave(_to_host(state)), force=True)
    self.best.wait_until_finished()
    record = {k: float(v) for k, v in metrics.items()}
    self._best_metrics_path.write_text(json.dumps(dict(record, step=step), indent=2))
    return True

  def best_metrics(self) -> Optional[dict[str, float]]:
    """Metrics of the best checkpoint (with its 'step'), or None before the first evaluation."""
    if not self._best_metrics_path.exists() or self.best.latest_step() is None:
      return None
    return json.loads(self._best_metrics_path.read_text())

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def restore(self, template: dict, which: str = "latest", step: Optional[int] = None) -> dict:
    """Restores a state shaped like `template` from 'latest' or 'best' (or a given step).

    Raises FileNotFoundError naming the directory when there is no checkpoint.
    """
    manager = self.latest if which == "latest" else self.best
    if step is None:
      step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no {which} checkpoint in {manager.directory}")
    restored = manager.restore(step, args=ocp.args.StandardRestore(_to_host(template)))
    return jax.tree_util.tree_map(
        lambda t, r: np.zeros(np.shape(t), np.asarray(t).dtype) if np.size(t) == 0 else r,
        template, restored)

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def save_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Writes config.json, refusing a workdir that holds another model's run."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if path.exists():
    check_same_model(json.loads(path.read_text()), config, path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config saved in a workdir. Raises FileNotFoundError naming the file."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {workdir} is not an irst_jax workdir")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def check_same_model(saved: dict, config: ml_collections.ConfigDict, path: pathlib.Path) -> None:
  """Raises WorkdirMismatchError when the saved model config differs from `config.model`."""
  saved_model = saved.get("model", {})
  current = json.loads(config.model.to_json_best_effort())
  if saved_model != current:
    diffs = sorted(k for k in set(saved_model) | set(current)
                   if saved_model.get(k) != current.get(k))
    raise WorkdirMismatchError(
        f"{path} holds a run of model {saved_model.get('name')!r} with a different model "
        f"configuration (differs in: {', '.join(diffs)}); the current config asks for "
        f"{current.get('name')!r}. Use a new --workdir, or the saved config.")


def save_normalization(workdir: str | pathlib.Path, info: Any) -> None:
  """Writes normalization.json (the statistics a run trains with) unless it exists.

  Args:
    info: a ``pipeline.DatasetInfo`` (its normalization kind, mean, std, name, builder_config).

  Raises:
    NormalizationMismatchError: the workdir's file holds another kind, mean or std (a resume
      whose config or dataset changed them), naming both and the overrides that continue
      with the stored statistics.
  """
  path = pathlib.Path(workdir) / NORMALIZATION_FILE
  record = {"kind": info.normalization, "mean": info.mean, "std": info.std,
            "dataset": info.name, "builder_config": info.builder_config,
            "formula": "(x - mean) / std on the 0..255 grey scale"}
  record = json.loads(json.dumps(record))   # tuples as lists, as read back
  stored = load_normalization(workdir)
  if stored is None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
    return
  same = (stored.get("kind") == record["kind"]
          and np.shape(stored.get("mean")) == np.shape(record["mean"])
          and np.allclose(stored.get("mean"), record["mean"], rtol=1e-6)
          and np.allclose(stored.get("std"), record["std"], rtol=1e-6))
  if not same:
    hint = (f"; to continue with them set --config.dataset.mean={stored.get('mean')} "
            f"--config.dataset.std={stored.get('std')}"
            if stored.get("kind") == record["kind"] and np.ndim(stored.get("mean")) == 0 else "")
    raise NormalizationMismatchError(
        f"{path}: the run trained with normalization {stored.get('kind')!r} mean "
        f"{stored.get('mean')} std {stored.get('std')} ({stored.get('dataset')}/"
        f"{stored.get('builder_config')}), but now gets {record['kind']!r} mean "
        f"{record['mean']} std {record['std']} ({info.name}/{info.builder_config}){hint}; "
        "or use a new --workdir")


def load_normalization(workdir: str | pathlib.Path) -> Optional[dict[str, Any]]:
  """The contents of a workdir's normalization.json, or None when it has none (older runs).

  Raises ValueError naming the file when it is not readable JSON with kind, mean and std.
  """
  path = pathlib.Path(workdir) / NORMALIZATION_FILE
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"cannot read {path}: {e}") from e
  if not isinstance(record, dict) or not {"kind", "mean", "std"} <= set(record):
    raise ValueError(f"{path} holds no normalization record; expected the keys kind, mean, std")
  return record


def with_saved_normalization(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                             missing_ok: bool = False) -> ml_collections.ConfigDict:
  """A copy of `config` whose ``dataset.mean`` / ``dataset.std`` are the workdir's stored ones.

  So evaluation, export, predict and a resumed run normalise as the run trained, whatever
  copy of the dataset is found now. The config is returned unchanged when it sets
  ``dataset.mean`` itself, when its normalization kind differs from the stored one (a
  deliberate choice; logged), for ImageNet RGB constants (fixed), and when the workdir has
  no normalization.json (a run from before the file: the dataset's statistics are used, with
  a warning unless `missing_ok`).
  """
  stored = load_normalization(workdir)
  kind = config.dataset.normalization
  if config.dataset.get("mean") is not None or config.dataset.get("std") is not None:
    return config
  if stored is None:
    if not missing_ok and kind == "dataset":
      logging.warning("%s has no %s (a run from an older irst_jax): normalising with the "
                      "statistics of the dataset copy found now, which may differ from those "
                      "it trained with", workdir, NORMALIZATION_FILE)
    return config
  if stored["kind"] != kind:
    logging.warning("%s: the run trained with normalization %r, the config asks for %r: "
                    "using the config's", pathlib.Path(workdir) / NORMALIZATION_FILE,
                    stored["kind"], kind)
    return config
  if np.ndim(stored["mean"]) != 0:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.dataset.mean = float(stored["mean"])
  config.dataset.std = float(stored["std"])
  return config
