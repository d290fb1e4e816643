"""Orbax checkpoints of a workdir: `checkpoints/` (latest, keep N) and `best/` (best test IoU).

Layout of a workdir:
  config.json          the run's full config (written at start; compared on resume)
  checkpoints/<step>/  latest training states (params, batch_stats, opt_state, step, epoch, rng)
  best/<step>/         the state with the best evaluation IoU; best_metrics.json its metrics
  metrics.jsonl, train.log, tensorboard/

A workdir belongs to one model: resuming with a config whose model differs from the saved
config raises `WorkdirMismatchError` naming both, so a checkpoint is never overwritten by a
different network.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
BEST_METRICS_FILE = "best_metrics.json"


class WorkdirMismatchError(ValueError):
  """The workdir holds a run of a different model (or model configuration)."""


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
