"""User errors and faults around a workdir: one clear error, nothing written or lost.

Config validation before anything is written, the workdir lock, resume with a changed
config, best/ and its metrics under a kill, a full disk during a checkpoint, metrics.jsonl
rows after a resume, and --mode=eval with another model's config.
"""
import errno
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import acm_fpn
from irst_jax import checkpoints, config_checks, train
from tests.test_main import _log_messages, _records, _tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(prepared, num_epochs=1, **kwargs):
  config = _tiny_config(prepared, num_epochs, **kwargs)
  config.train.batch_size = 2   # 6 fake training images: three steps an epoch
  return config


@pytest.fixture(scope="module")
def trained(prepared_fake_nuaa, tmp_path_factory):
  """A workdir trained one epoch (steps 1-3, checkpoint and evaluation at step 3)."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  train.train_and_evaluate(_config(prepared_fake_nuaa), str(workdir))
  return workdir


def _copy(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


def _dead_pid():
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


# -- 2. the whole config is validated before the workdir is touched -----------------------------


@pytest.mark.parametrize("field,value,message", [
    ("model.name", "acm_unte", r"^model\.name='acm_unte': unknown; expected one of acm_fpn, "
                               r"acm_unet,"),
    ("model.fusion", "asym", r"^model\.fusion='asym': unknown; expected one of asym_bi,"),
    ("train.batch_size", 0, r"^train\.batch_size=0: expected an integer >= 1$"),
    ("train.checkpoint_every_epochs", 0,
     r"^train\.checkpoint_every_epochs=0: expected an integer >= 1$"),
    ("train.num_epochs", 0, r"^train\.num_epochs=0: expected an integer >= 1$"),
    ("eval.threshold", 1.5, r"^eval\.threshold=1\.5: expected a number in \(0, 1\)$"),
    ("dataset.eval_split", "val", r"^dataset\.eval_split='val': nuaa_sirst/50_50 has no such "
                                  r"split; its splits are test, train$"),
    ("dataset.crop_size", 48, r"^dataset\.crop_size=48: expected a positive multiple of 32$"),
    ("train.loss", "dice", r"^train\.loss='dice': unknown; expected one of bce, soft_iou, unite$"),
    ("optim.optimizer", "rmsprop", r"^optim\.optimizer='rmsprop': unknown optimizer"),
    ("train.batch_size", 8, r"^train\.batch_size=8: exceeds the 6 training images of "
                            r"nuaa_sirst/50_50 train$"),
])
def test_bad_config_writes_nothing(prepared_fake_nuaa, tmp_path, field, value, message):
  config = _config(prepared_fake_nuaa)
  section, key = field.split(".")
  config[section][key] = value
  fresh, empty = tmp_path / "fresh", tmp_path / "empty"
  empty.mkdir()
  for workdir in (fresh, empty):
    with pytest.raises(config_checks.ConfigError, match=message):
      train.train_and_evaluate(config, str(workdir))
  assert not fresh.exists()             # not even created: no config.json, no lock
  assert list(empty.iterdir()) == []


def test_batch_must_divide_over_devices(prepared_fake_nuaa):
  config = _config(prepared_fake_nuaa)
  with pytest.raises(config_checks.ConfigError,
                     match=r"^train\.batch_size=2: not divisible by the 3 devices"):
    config_checks.check_training_config(config, num_devices=3)
  config.train.batch_size = 6
  info = config_checks.check_training_config(config, num_devices=3)
  assert info.num_examples == {"train": 6, "test": 6}


# -- 1. one training run per workdir -------------------------------------------------------------


def test_second_lock_is_refused_and_released(tmp_path):
  workdir = tmp_path / "run"
  with checkpoints.workdir_lock(workdir) as lock:
    assert lock.previous is None
    owner = json.loads((workdir / checkpoints.LOCK_FILE).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(checkpoints.WorkdirBusyError) as raised:
      with checkpoints.workdir_lock(workdir):
        pass
    assert str(raised.value).startswith(
        f"{workdir} is in use by another training run (pid {os.getpid()} on host "
        f"{socket.gethostname()}, since {owner['since']})")
    assert isinstance(raised.value, OSError)
  # released cleanly: the record is emptied, the next run takes it over nothing
  assert (workdir / checkpoints.LOCK_FILE).read_text() == ""
  with checkpoints.workdir_lock(workdir) as lock:
    assert lock.previous is None and lock.describe_takeover() is None


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no_flock"])
def test_stale_lock_is_taken_over(tmp_path, monkeypatch, flock):
  workdir = tmp_path / "run"
  workdir.mkdir()
  if not flock:   # a file system without flock: the pid and host decide
    def no_flock(fd, operation):
      raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(checkpoints.fcntl, "flock", no_flock)
  host = socket.gethostname()
  dead = _dead_pid()
  (workdir / checkpoints.LOCK_FILE).write_text(
      json.dumps({"pid": dead, "host": host, "since": "2026-12-07T10:00:00+00:00"}))
  with checkpoints.workdir_lock(workdir) as lock:
    assert lock.previous["pid"] == dead
    assert lock.describe_takeover() == (
        f"took over the lock {workdir / checkpoints.LOCK_FILE} left by pid {dead} on host "
        f"{host} (since 2026-12-07T10:00:00+00:00): that run is gone")
    assert json.loads((workdir / checkpoints.LOCK_FILE).read_text())["pid"] == os.getpid()
  if not flock:   # a live pid on this host, or any pid of another host, is not taken over
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
      for owner in ({"pid": alive.pid, "host": host}, {"pid": dead, "host": host + "-other"}):
        (workdir / checkpoints.LOCK_FILE).write_text(json.dumps(dict(owner, since="x")))
        with pytest.raises(checkpoints.WorkdirBusyError,
                           match=rf"\(pid {owner['pid']} on host {owner['host']}, since x\)"):
          with checkpoints.workdir_lock(workdir):
            pass
    finally:
      alive.kill()
      alive.wait()


_HOLD_LOCK = textwrap.dedent("""
    import sys
    from irst_jax import checkpoints
    with checkpoints.workdir_lock(sys.argv[1]):
      print("locked", flush=True)
      sys.stdin.read()
""")


def test_training_is_refused_while_another_process_trains(prepared_fake_nuaa, tmp_path):
  workdir = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(workdir)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"))
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(checkpoints.WorkdirBusyError,
                       match=rf"^{workdir} is in use by another training run \(pid "
                             rf"{holder.pid} on host {socket.gethostname()}, since "):
      train.train_and_evaluate(_config(prepared_fake_nuaa), str(workdir))
    assert sorted(p.name for p in workdir.iterdir()) == [checkpoints.LOCK_FILE]
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)


# -- 3. resume with a changed config --------------------------------------------------------------


def test_resume_with_another_batch_size_is_refused(prepared_fake_nuaa, trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*")
            if p.is_file() and p.name != "train.log"}
  config = _config(prepared_fake_nuaa, num_epochs=2)
  config.train.batch_size = 3
  config.optim.learning_rate = 1e-3
  with pytest.raises(config_checks.ConfigError) as raised:
    train.train_and_evaluate(config, str(workdir))
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(f"cannot resume the run in {workdir / 'config.json'} with a changed "
                            "optim.learning_rate (0.0005 -> 0.001), train.batch_size (2 -> 3): ")
  after = {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*")
           if p.is_file() and p.name != "train.log"}
  assert after == before   # config.json, checkpoints, metrics untouched


def test_step_zero_checkpoint_takes_new_training_settings(prepared_fake_nuaa, trained, tmp_path):
  """Imported weights (a step-0 checkpoint) are fine-tuned with any optimiser settings."""
  workdir = _copy(trained, tmp_path)
  store = checkpoints.CheckpointStore(workdir)
  state = store.latest.restore(3)
  state["step"], state["epoch"] = np.int32(0), np.int32(0)
  store.save_latest(0, state)
  store.latest.delete(3)
  store.close()
  (workdir / "metrics.jsonl").unlink()
  config = _config(prepared_fake_nuaa)
  config.optim.learning_rate = 1e-3
  train.train_and_evaluate(config, str(workdir))
  assert json.loads((workdir / "config.json").read_text())["optim"]["learning_rate"] == 1e-3
  assert [(r["split"], r["step"]) for r in _records(workdir)] == [("train", 3), ("test", 3)]


def test_resumable_fields():
  base = {"train": {"batch_size": 2, "num_epochs": 4, "seed": 1, "log_every_steps": 5},
          "optim": {"schedule": "multistep"}, "eval": {"threshold": 0.5},
          "dataset": {"data_dir": "/a", "train_split": "train"}}

  def check(saved, **changes):
    config = json.loads(json.dumps(saved))
    for name, value in changes.items():
      section, key = name.split("__")
      config[section][key] = value
    config_checks.check_resumable(saved, _configdict(config), "w/config.json")

  # safe: more epochs under a multistep schedule, eval options, intervals, data folders
  check(base, train__num_epochs=10, eval__threshold=0.3, train__log_every_steps=1,
        dataset__data_dir="/b", train__steps_per_dispatch=4)
  # an older workdir's config.json: the removed dataset.num_workers, no steps_per_dispatch
  old = json.loads(json.dumps(base))
  old["dataset"]["num_workers"] = 2
  new = json.loads(json.dumps(base))
  new["train"]["steps_per_dispatch"] = 16
  config_checks.check_resumable(old, _configdict(new), "w/config.json")
  with pytest.raises(config_checks.ConfigError,
                     match=r"changed train\.num_epochs \(4 -> 10\): .*; optim\.schedule='cosine' "
                           r"depends on train\.num_epochs\."):
    check(dict(base, optim={"schedule": "cosine"}), train__num_epochs=10)
  with pytest.raises(config_checks.ConfigError,
                     match=r"changed dataset\.train_split \('train' -> 'trainval'\), train\.seed "
                           r"\(1 -> 2\): "):
    check(base, train__seed=2, dataset__train_split="trainval")


def _configdict(d):
  import ml_collections
  return ml_collections.ConfigDict(d)


def test_rerun_of_a_finished_run_trains_nothing(prepared_fake_nuaa, trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  result = train.train_and_evaluate(_config(prepared_fake_nuaa), str(workdir))
  test_row = [r for r in _records(workdir) if r["split"] == "test"][-1]
  assert result["final"] == {k: v for k, v in test_row.items()
                             if k not in ("split", "step", "epoch")}
  assert result["best"]["step"] == 3 and _records(workdir) == _records(trained)
  assert any(m.startswith(f"the run in {workdir} has trained its 1 epochs (step 3)")
             for m in _log_messages(workdir))
  # a run two epochs long, then asked for one: its checkpoint is past the end
  store = checkpoints.CheckpointStore(workdir)
  state = store.latest.restore(3)
  state["step"], state["epoch"] = np.int32(6), np.int32(2)
  store.save_latest(6, state)
  store.close()
  with pytest.raises(config_checks.ConfigError,
                     match=r"^train\.num_epochs=1: the checkpoint in .* has already trained 2 "
                           r"epochs \(step 6\)"):
    train.train_and_evaluate(_config(prepared_fake_nuaa), str(workdir))


# -- 5. best/ and its metrics together ------------------------------------------------------------


def _state(value):
  return {"params": {"w": np.full((3,), value, np.float32)}, "step": np.int32(value)}


def test_kill_between_best_checkpoint_and_metrics_file(tmp_path, monkeypatch):
  store = checkpoints.CheckpointStore(tmp_path)
  assert store.save_best(16, _state(16), {"IoU": 0.5, "Pd": 0.9})
  assert json.loads((tmp_path / checkpoints.BEST_METRICS_FILE).read_text())["step"] == 16

  def killed(path, text):
    raise KeyboardInterrupt("killed after the Orbax save")
  monkeypatch.setattr(checkpoints, "write_text_atomic", killed)
  with pytest.raises(KeyboardInterrupt):
    store.save_best(32, _state(32), {"IoU": 0.7, "Pd": 0.95})
  store.close()
  monkeypatch.undo()
  # best_metrics.json still says step 16, but the answer comes from best/32 itself
  assert json.loads((tmp_path / checkpoints.BEST_METRICS_FILE).read_text())["step"] == 16
  store = checkpoints.CheckpointStore(tmp_path)
  assert store.best.all_steps() == [32]
  assert store.best_metrics() == {"IoU": 0.7, "Pd": 0.95, "step": 32}
  assert checkpoints.read_best_metrics(tmp_path) == {"IoU": 0.7, "Pd": 0.95, "step": 32}
  np.testing.assert_array_equal(store.restore(_state(0), which="best")["params"]["w"], [32] * 3)
  assert not store.save_best(48, _state(48), {"IoU": 0.6})   # compared with 0.7, not 0.5
  store.sync_best_metrics_file()
  assert json.loads((tmp_path / checkpoints.BEST_METRICS_FILE).read_text())["step"] == 32
  store.close()


def test_best_checkpoint_without_metrics_ignores_another_steps_file(tmp_path):
  """A workdir written before the metrics lived in best/<step> (or imported weights)."""
  store = checkpoints.CheckpointStore(tmp_path)
  store.set_best(32, _state(32))   # no metrics, as older versions and import_weights saved it
  (tmp_path / checkpoints.BEST_METRICS_FILE).write_text(json.dumps({"IoU": 0.5, "step": 16}))
  assert store.best_metrics() is None
  (tmp_path / checkpoints.BEST_METRICS_FILE).write_text(json.dumps({"IoU": 0.5, "step": 32}))
  assert store.best_metrics() == {"IoU": 0.5, "step": 32}
  store.close()


# -- 7. a full disk during a checkpoint -----------------------------------------------------------


def _full_disk(monkeypatch, error):
  """CheckpointManager.save of checkpoints/ writes a partial temporary folder, then fails."""
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    directory = pathlib.Path(self.directory)
    if directory.name != "checkpoints":
      return real_save(self, step, *args, **kwargs)
    tmp = directory / f"{step}{checkpoints.ORBAX_TMP_SUFFIX}" / "default.orbax-checkpoint-tmp"
    tmp.mkdir(parents=True)
    (tmp / "part").write_bytes(b"\0" * 1000)
    raise error
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def test_disk_full_of_our_own_write_is_one_line(tmp_path, monkeypatch):
  store = checkpoints.CheckpointStore(tmp_path)
  store.save_latest(1, _state(1))
  _full_disk(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
  with pytest.raises(checkpoints.CheckpointDiskFullError) as raised:
    store.save_latest(2, _state(2))
  store.close()
  message = str(raised.value)
  assert raised.value.errno == errno.ENOSPC and "\n" not in message
  assert message.startswith(f"no space left on the device of {tmp_path / 'checkpoints'} while "
                            "writing the checkpoint of step 2: ")
  assert message.endswith("rerun the command to resume from step 1")
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_disk_full_during_an_asynchronous_save_is_one_line(tmp_path, monkeypatch):
  """The background write of an asynchronous save fails: the next wait reports it in one line
  and removes the unfinished folder."""
  store = checkpoints.CheckpointStore(tmp_path, asynchronous=True)
  store.save_latest(1, _state(1))
  store.wait()
  real_wait = ocp.CheckpointManager.wait_until_finished

  def wait(self):
    real_wait(self)
    if pathlib.Path(self.directory).name == "checkpoints" and (tmp_path / "checkpoints" / "2").exists():
      shutil.rmtree(tmp_path / "checkpoints" / "2")   # as if the rename had not happened
      (tmp_path / "checkpoints" / f"2{checkpoints.ORBAX_TMP_SUFFIX}").mkdir()
      raise ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']")
  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", wait)
  store.save_latest(2, _state(2))   # returns before the files are written
  with pytest.raises(checkpoints.CheckpointDiskFullError) as raised:
    store.wait()
  message = str(raised.value)
  assert "\n" not in message and message.startswith(
      f"no space left on the device of {tmp_path / 'checkpoints'} while writing the checkpoint "
      "of step 2: ") and message.endswith("rerun the command to resume from step 1")
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
  monkeypatch.undo()
  store.close()


def test_disk_full_during_training_then_rerun_resumes(prepared_fake_nuaa, trained, tmp_path,
                                                      monkeypatch, caplog):
  workdir = _copy(trained, tmp_path)
  # TensorStore's own report of a full disk, as Orbax raises it
  _full_disk(monkeypatch, ValueError(
      'RESOURCE_EXHAUSTED: Error writing "params/0" in OCDBT database: Failed to write 169830 '
      "bytes to file 11: No space left on device [os_error_code='28']"))
  with pytest.raises(checkpoints.CheckpointDiskFullError) as raised:
    train.train_and_evaluate(_config(prepared_fake_nuaa, num_epochs=2), str(workdir))
  match = re.fullmatch(
      rf"no space left on the device of {re.escape(str(workdir / 'checkpoints'))} while writing "
      r"the checkpoint of step 6: ([\d.]+) MB free, a checkpoint needs about ([\d.]+) MB; the "
      r"unfinished folder was removed: free some space and rerun the command to resume from "
      r"step 3", str(raised.value))
  assert match, str(raised.value)
  free = shutil.disk_usage(workdir).free / 1e6
  assert abs(float(match[1]) - free) < 0.01 * free + 100   # other processes write too
  # the size of the previous checkpoint on disk (or more: the state's bytes)
  needed = sum(f.stat().st_size for f in (workdir / "checkpoints" / "3").rglob("*") if f.is_file())
  assert float(match[2]) >= round(needed / 1e6, 1) > 0
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3"]
  # the epoch's train row was logged before the failed checkpoint
  assert [(r["split"], r["step"]) for r in _records(workdir)] == [
      ("train", 3), ("test", 3), ("train", 6)]
  monkeypatch.undo()
  # a crash left its lock record behind: the rerun takes it over and says so
  (workdir / checkpoints.LOCK_FILE).write_text(
      json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": "earlier"}))
  train.train_and_evaluate(_config(prepared_fake_nuaa, num_epochs=2), str(workdir))
  messages = _log_messages(workdir)
  assert any(m.startswith("took over the lock") and m.endswith("that run is gone")
             for m in messages)
  assert any(m.startswith("resumed from") and m.endswith("at step 3 (epoch 1)") for m in messages)
  assert [(r["split"], r["step"]) for r in _records(workdir)] == [
      ("train", 3), ("test", 3), ("train", 6), ("test", 6)]   # no duplicate step-6 row
  assert checkpoints.CheckpointStore(workdir).latest_step() == 6


# -- 9. --mode=eval with another model's config ---------------------------------------------------


def test_eval_with_another_models_config_is_refused(prepared_fake_nuaa, trained):
  with pytest.raises(checkpoints.WorkdirMismatchError, match=r"'acm_unet'.*'acm_fpn'"):
    train.evaluate_workdir(str(trained), config=_config(prepared_fake_nuaa, model=acm_fpn))


def test_checkpoint_of_another_network_is_one_line(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  saved = json.loads((workdir / "config.json").read_text())
  saved["model"]["channels"] = [4, 8, 8, 8]   # a config.json edited by hand
  (workdir / "config.json").write_text(json.dumps(saved))
  with pytest.raises(checkpoints.CheckpointMismatchError) as raised:
    train.evaluate_workdir(str(workdir))
  message = str(raised.value)
  assert "\n" not in message and len(message) < 400
  assert message.startswith(f"checkpoint {workdir / 'best' / '3'} does not fit the config's "
                            "model: ")
  assert "in the checkpoint" in message and message.endswith(
      f"is {workdir} a run of this config?")
