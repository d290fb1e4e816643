"""Orbax checkpoints of a workdir: `checkpoints/` (latest, keep N) and `best/` (best test IoU).

Layout of a workdir:
  config.json          the run's full config (written once validated and accepted; compared
                       on resume)
  normalization.json   the input normalisation it trained with: kind, mean, std (0..255
                       scale), dataset and builder config (written with config.json; used by
                       evaluation, export, predict and resumed training)
  .lock                pid and host of the training run using the workdir (`workdir_lock`)
  checkpoints/<step>/  latest training states (params, batch_stats, opt_state, step, epoch, rng)
  best/<step>/         the state with the best evaluation IoU, its metrics in the step's own
                       Orbax metadata; best_metrics.json a copy of them for people and tools
  metrics.jsonl, train.log, tensorboard/

A workdir belongs to one model: resuming with a config whose model differs from the saved
config raises `WorkdirMismatchError` naming both, so a checkpoint is never overwritten by a
different network. Nothing is lost on a crash: Orbax writes a step into a temporary folder
and renames it when complete; the best checkpoint's metrics are written inside that same
step (so `best/` and its metrics cannot disagree), and a full disk gives one
`CheckpointDiskFullError` line, the temporary folder removed.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging as std_logging
import os
import pathlib
import shutil
import socket
import tempfile
from typing import Any, Iterator, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

CONFIG_FILE = "config.json"
BEST_METRICS_FILE = "best_metrics.json"
NORMALIZATION_FILE = "normalization.json"
LOCK_FILE = ".lock"
#: Suffix of the folders Orbax writes a step into before renaming them (orbax-checkpoint 0.11+).
ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class WorkdirMismatchError(ValueError):
  """The workdir holds a run of a different model (or model configuration)."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the state of the config's model (another network)."""


class WorkdirBusyError(OSError):
  """Another training run holds the workdir's lock."""


class CheckpointDiskFullError(OSError):
  """The disk filled up while a checkpoint was written; the previous checkpoints are intact.
  A one-line message (no '[Errno 28]' prefix) with `errno` ENOSPC."""

  def __init__(self, message: str):
    super().__init__(message)
    self.errno = errno.ENOSPC


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


def _path_name(path: tuple) -> str:
  """'params/conv/kernel' for a JAX key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _shapes(tree: Any) -> dict[str, tuple]:
  """{'params/conv/kernel': shape} of a tree of arrays or of Orbax array metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))[0]
  return {_path_name(path): tuple(np.shape(leaf) if not hasattr(leaf, "shape") else leaf.shape)
          for path, leaf in leaves}


def _tree_difference(expected: Any, found: Any) -> Optional[str]:
  """The first difference of names or shapes between two trees, in words; None if they agree."""
  want, have = _shapes(expected), _shapes(found)
  for name in sorted(set(want) | set(have)):
    if name not in have:
      return f"{name} is in the model but not in the checkpoint"
    if name not in want:
      return f"{name} is in the checkpoint but not in the model"
    if tuple(want[name]) != tuple(have[name]):
      return f"{name} has shape {tuple(have[name])} in the checkpoint, {tuple(want[name])} in the model"
  return None


def _is_disk_full(error: BaseException) -> bool:
  """Whether `error` (or an error it was raised from) says the disk or quota is full.

  Orbax's TensorStore writes report it as ValueError('RESOURCE_EXHAUSTED: ... No space left on
  device [os_error_code=\'28\']'); Python writes as OSError(ENOSPC).
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(error)
    if ("No space left on device" in text or "Disk quota exceeded" in text
        or f"os_error_code='{errno.ENOSPC}'" in text):
      return True
    error = error.__cause__ or error.__context__
  return False


def _folder_bytes(path: pathlib.Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _megabytes(n: float) -> str:
  return f"{n / 1e6:.1f} MB"


def remove_temporary_folders(directory: str | pathlib.Path) -> list[pathlib.Path]:
  """Deletes the unfinished step folders (`<step>.orbax-checkpoint-tmp*`) Orbax left in
  `directory` (a crash or a full disk mid-save); returns them. Call only while holding the
  workdir's lock: a running save's folder looks the same."""
  removed = []
  directory = pathlib.Path(directory)
  if directory.is_dir():
    for path in sorted(directory.glob(f"*{ORBAX_TMP_SUFFIX}*")):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


class _HeldOrbaxErrors(std_logging.Filter):
  """Holds back the ERROR records (with tracebacks, one per worker thread) that Orbax logs
  while a save fails, so that a full disk is reported as one line; `release` re-emits them
  when the failure is something else."""

  def __init__(self):
    super().__init__()
    self.held: list[std_logging.LogRecord] = []

  def filter(self, record: std_logging.LogRecord) -> bool:
    if "orbax" in record.pathname and record.levelno >= std_logging.WARNING:
      self.held.append(record)
      return False
    return True

  def release(self, logger: std_logging.Logger) -> None:
    for record in self.held:
      logger.handle(record)


class CheckpointStore:
  """The latest and best checkpoints of one workdir.

  With several JAX processes, every process creates the store and calls each save, restore
  and `wait` in the same order (Orbax's multi-process contract: the host arrays are written
  once, the step is committed when every process is done); process 0 alone writes
  best_metrics.json.

  Saves of `best/` are synchronous (written when `set_best` / `save_best` return). Saves of
  `checkpoints/` are synchronous too, or with `asynchronous=True` (training) Orbax's
  asynchronous ones: `save_latest` returns once the state is copied to host memory and the
  files are written by a background thread, so that training goes on meanwhile. A save in
  flight is waited for (and its error raised) by `wait`, by the next save of either kind, and
  by `close`. The best checkpoint's metrics are stored in its step's Orbax metadata
  (`custom_metadata['metrics']`), written into the step's temporary folder before Orbax renames
  it, so that `best/<step>` and its metrics appear together or not at all; best_metrics.json is
  rewritten (atomically) after each new best as a readable copy.

  Args:
    workdir: the run directory.
    keep: number of latest checkpoints kept.
    asynchronous: `save_latest` returns before the files are written.
  """

  def __init__(self, workdir: str | pathlib.Path, keep: int = 2, asynchronous: bool = False):
    self.workdir = pathlib.Path(workdir).absolute()
    self.asynchronous = bool(asynchronous)

    def options(max_to_keep, enable_async):
      return ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                          enable_async_checkpointing=enable_async)

    self.latest = ocp.CheckpointManager(self.workdir / "checkpoints",
                                        options=options(keep, self.asynchronous))
    self.best = ocp.CheckpointManager(self.workdir / "best", options=options(1, False))
    self._best_metrics_path = self.workdir / BEST_METRICS_FILE
    # (manager, step, host state, held Orbax log records) of the save not yet waited for
    self._pending: Optional[tuple] = None

  def _save(self, manager: ocp.CheckpointManager, step: int, state: dict,
            custom_metadata: Optional[dict] = None, wait: bool = True) -> None:
    """Saves `state` under `step` (waits for the files unless `wait` is False; see `wait`); a
    full disk raises CheckpointDiskFullError (one line) after removing the unfinished step
    folder."""
    self.wait()
    host = _to_host(state)
    held = _HeldOrbaxErrors()
    std_logging.getLogger("absl").addFilter(held)
    self._pending = (manager, step, host, held)
    try:
      manager.save(step, args=ocp.args.StandardSave(host), force=True,
                   custom_metadata=custom_metadata)
    except Exception as e:
      self._finish(e)
    if wait:
      self.wait()

  def wait(self) -> None:
    """Waits until the save in flight (if any) is written.

    Raises CheckpointDiskFullError (one line, the unfinished folder removed) when the disk
    filled up meanwhile, or the save's own error.
    """
    if self._pending is None:
      return
    try:
      self._pending[0].wait_until_finished()
    except Exception as e:
      self._finish(e)
    self._finish(None)

  def _finish(self, error: Optional[BaseException]) -> None:
    """Ends the pending save: releases the Orbax log records held meanwhile (not those of a
    full disk) and raises `error` (a full disk as CheckpointDiskFullError)."""
    manager, step, host, held = self._pending
    self._pending = None
    logger = std_logging.getLogger("absl")
    logger.removeFilter(held)
    if error is None or not _is_disk_full(error):
      held.release(logger)
      if error is not None:
        raise error
      return
    raise self._disk_full(pathlib.Path(manager.directory), step, host) from None

  def _disk_full(self, directory: pathlib.Path, step: int, host_state: Any
                 ) -> CheckpointDiskFullError:
    remove_temporary_folders(directory)
    steps = [s for s in self.latest.all_steps() if s != step]
    previous = self.workdir / "checkpoints" / str(max(steps)) if steps else None
    needed = max(_folder_bytes(previous) if previous else 0,
                 sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(host_state)))
    free = shutil.disk_usage(directory).free
    resume = (f"resume from step {max(steps)}" if steps else "start again")
    return CheckpointDiskFullError(
        f"no space left on the device of {directory} while writing the checkpoint of step "
        f"{step}: {_megabytes(free)} free, a checkpoint needs about {_megabytes(needed)}; the "
        f"unfinished folder was removed: free some space and rerun the command to {resume}")

  def save_latest(self, step: int, state: dict) -> None:
    """Saves a training state dict under `step` (returns once written, or, for an
    `asynchronous` store, once copied to host memory: see `wait`).

    Raises CheckpointDiskFullError (an OSError) when the disk fills up (for an asynchronous
    save: raised by the next `wait`, save or `close`).
    """
    self._save(self.latest, step, state, wait=not self.asynchronous)

  def set_best(self, step: int, state: dict, metrics: Optional[dict[str, float]] = None) -> None:
    """Makes `state` the best checkpoint, with `metrics` (None: not evaluated yet, e.g.
    imported weights; the first evaluation then replaces it)."""
    record = None if metrics is None else dict({k: float(v) for k, v in metrics.items()},
                                                step=int(step))
    self._save(self.best, step, state, custom_metadata={"metrics": record} if record else None)
    if record is not None and jax.process_index() == 0:   # one writer of the readable copy
      try:
        write_text_atomic(self._best_metrics_path, json.dumps(record, indent=2))
      except OSError as e:
        if _is_disk_full(e):
          raise CheckpointDiskFullError(
              f"no space left on the device of {self.workdir} while writing "
              f"{self._best_metrics_path} ({_megabytes(shutil.disk_usage(self.workdir).free)} "
              "free); the best checkpoint holds these metrics too: free some space and rerun "
              "the command") from None
        raise

  def save_best(self, step: int, state: dict, metrics: dict[str, float]) -> bool:
    """Keeps `state` if its IoU beats the best so far. Returns True when it became the best."""
    previous = self.best_metrics()
    if previous is not None and previous["IoU"] >= metrics["IoU"]:
      return False
    self.set_best(step, state, metrics)
    return True

  def best_metrics(self) -> Optional[dict[str, float]]:
    """Metrics of the best checkpoint (with its 'step'), or None when it has none yet.

    The truth is the metrics saved inside `best/<step>`; a workdir written before they were
    stored there falls back to best_metrics.json only when its 'step' is the checkpoint's
    (a best_metrics.json of another step describes another state and is ignored).
    """
    step = self.best.latest_step()
    if step is None:
      return None
    custom = self.best.metadata(step).custom_metadata or {}
    if custom.get("metrics") is not None:
      return custom["metrics"]
    if self._best_metrics_path.exists():
      record = json.loads(self._best_metrics_path.read_text())
      if int(record.get("step", -1)) == step:
        return record
      logging.warning("%s is of step %s but %s holds step %d: ignored", self._best_metrics_path,
                      record.get("step"), self.best.directory, step)
    return None

  def sync_best_metrics_file(self) -> None:
    """Rewrites best_metrics.json from the best checkpoint's own metrics when they differ
    (a run killed between the two writes). Only with the workdir's lock held."""
    metrics = self.best_metrics()
    if metrics is None:
      return
    path = self._best_metrics_path
    if not path.exists() or json.loads(path.read_text()) != metrics:
      write_text_atomic(path, json.dumps(metrics, indent=2))

  def latest_step(self) -> Optional[int]:
    """The step of the latest checkpoint written (a save in flight is waited for first)."""
    self.wait()
    return self.latest.latest_step()

  def restore(self, template: dict, which: str = "latest", step: Optional[int] = None) -> dict:
    """Restores a state shaped like `template` from 'latest' or 'best' (or a given step).

    Raises:
      FileNotFoundError: no checkpoint (naming the directory).
      CheckpointMismatchError: the checkpoint's arrays differ in names or shapes from the
        template's (the workdir holds another network), naming the first difference.
    """
    manager = self.latest if which == "latest" else self.best
    if step is None:
      step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no {which} checkpoint in {manager.directory}")
    host = _to_host(template)
    where = pathlib.Path(manager.directory) / str(step)
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(host))
    except (ValueError, KeyError, TypeError) as e:
      try:
        difference = _tree_difference(host, manager.item_metadata(step).tree)
      except Exception:  # older or newer Orbax metadata layouts: fall back on its message
        difference = None
      raise CheckpointMismatchError(
          f"checkpoint {where} does not fit the config's model: "
          f"{difference or str(e).splitlines()[0][:300]}; is {self.workdir} a run of this "
          "config?") from None
    difference = _tree_difference(host, restored)
    if difference:
      raise CheckpointMismatchError(
          f"checkpoint {where} does not fit the config's model: {difference}; is "
          f"{self.workdir} a run of this config?")
    return jax.tree_util.tree_map(
        lambda t, r: np.zeros(np.shape(t), np.asarray(t).dtype) if np.size(t) == 0 else r,
        template, restored)

  def close(self) -> None:
    """Waits for a save in flight (raising its error, see `wait`), then closes the managers."""
    try:
      self.wait()
    finally:
      self.latest.close()
      self.best.close()


def read_best_metrics(workdir: str | pathlib.Path) -> Optional[dict[str, float]]:
  """`CheckpointStore.best_metrics` of a workdir: the metrics stored with its best checkpoint."""
  store = CheckpointStore(workdir)
  try:
    return store.best_metrics()
  finally:
    store.close()


def write_text_atomic(path: str | pathlib.Path, text: str) -> None:
  """Writes `path` through a temporary file in its folder and `os.replace`: readers and a
  crash see the old or the new content, never a part. The temporary file is removed when the
  write fails (e.g. a full disk)."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


class WorkdirLock:
  """What `workdir_lock` found: `previous`, the owner {'pid', 'host', 'since'} of a lock left
  by a run that ended without releasing it (a crash), or None."""

  def __init__(self, path: pathlib.Path, previous: Optional[dict]):
    self.path = path
    self.previous = previous

  def describe_takeover(self) -> Optional[str]:
    if not self.previous:
      return None
    p = self.previous
    return (f"took over the lock {self.path} left by pid {p.get('pid')} on host "
            f"{p.get('host')} (since {p.get('since')}): that run is gone")


def _lock_owner(text: str) -> Optional[dict]:
  try:
    owner = json.loads(text)
  except ValueError:
    return None
  return owner if isinstance(owner, dict) and "pid" in owner else None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # alive, another user's
    return True
  return True


def _busy(workdir: pathlib.Path, owner: Optional[dict]) -> WorkdirBusyError:
  who = (f"pid {owner.get('pid')} on host {owner.get('host')}, since {owner.get('since')}"
         if owner else "a process that has not written its pid yet")
  return WorkdirBusyError(
      f"{workdir} is in use by another training run ({who}); wait for it to end or use "
      "another --workdir (--mode=eval may run beside it)")


@contextlib.contextmanager
def workdir_lock(workdir: str | pathlib.Path) -> Iterator[WorkdirLock]:
  """Holds `workdir/.lock` for one training run; creates the workdir.

  The lock is an exclusive `fcntl.flock` on `.lock`, which holds the owner's pid, host and
  start time (JSON). The kernel drops a flock when its process dies, so a crashed run's lock
  is free at once; its owner record is then reported as taken over (`WorkdirLock.previous`).
  Where the file system has no flock (ENOLCK, EOPNOTSUPP, ENOSYS), the owner record alone
  decides: a lock of a live pid on this host, or of another host, is refused; one of a dead
  pid on this host is taken over. On exit the record is emptied (the file stays: deleting it
  would let two runs lock two different files).

  Raises:
    WorkdirBusyError (an OSError): another run holds the lock, naming its pid and host.
  """
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+")   # closed below
  host = socket.gethostname()
  try:
    flocked = True
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      raise _busy(workdir, _lock_owner(f.read())) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise
      flocked = False
    f.seek(0)
    previous = _lock_owner(f.read())
    if previous is not None and not flocked:
      same_host = previous.get("host") == host
      if not same_host or (previous.get("pid") != os.getpid()
                           and _pid_alive(int(previous.get("pid", 0)))):
        raise _busy(workdir, previous)
    owner = {"pid": os.getpid(), "host": host,
             "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    f.seek(0)
    f.truncate()
    f.write(json.dumps(owner))
    f.flush()
    os.fsync(f.fileno())   # other hosts of a multi-process run read it (network file systems)
    try:
      yield WorkdirLock(path, previous)
    finally:
      f.seek(0)
      f.truncate()
      f.flush()
      if flocked:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
  finally:
    f.close()


def read_saved_config(workdir: str | pathlib.Path) -> Optional[dict]:
  """The workdir's config.json as a dict, or None when there is none."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  return json.loads(path.read_text()) if path.exists() else None


def save_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Writes config.json (atomically), refusing a workdir that holds another model's run."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if path.exists():
    check_same_model(json.loads(path.read_text()), config, path)
  path.parent.mkdir(parents=True, exist_ok=True)
  write_text_atomic(path, config.to_json_best_effort(indent=2, sort_keys=True))


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
