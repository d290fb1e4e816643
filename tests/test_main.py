"""The main job end to end on a tiny fake NUAA-SIRST: CLI, resume, divergence, workdir checks."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import acm_fpn, acm_unet
from irst_jax import checkpoints, losses, models, optim, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny_config(prepared, num_epochs=1, model=acm_unet):
  raw, data_dir = prepared
  config = model.get_config("nuaa_sirst,smoke")
  config.model.channels = (4, 8, 8, 16)
  config.model.num_blocks = 1
  config.dataset.data_dir = str(data_dir)
  config.dataset.manual_dir = str(raw)
  config.dataset.crop_size = 32
  config.dataset.pad_multiple = 96   # the fake images (20-70 px) share one padded shape
  config.train.num_epochs = num_epochs
  return config


def _records(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _log_messages(workdir):
  """The messages of train.log ('date time LEVEL message' lines)."""
  return [line.split(" ", 3)[3] for line in (pathlib.Path(workdir) / "train.log").read_text().splitlines()]


def _latest_state(workdir):
  store = checkpoints.CheckpointStore(workdir)
  try:
    return store.latest.restore(store.latest_step())
  finally:
    store.close()


def test_resumed_run_equals_uninterrupted_run(prepared_fake_nuaa, tmp_path, monkeypatch):
  """Runs stopped by the time limit mid-epoch, or after an epoch, and rerun equal one
  uninterrupted run of the same steps a dispatch (the same compiled programs)."""
  def config(num_epochs=2, steps_per_dispatch=16):
    tiny = _tiny_config(prepared_fake_nuaa, num_epochs)
    tiny.train.batch_size = 2   # 6 training images: three steps an epoch
    tiny.train.steps_per_dispatch = steps_per_dispatch   # CPU's default: 1
    return tiny
  lengths = []   # the chunk lengths compiled, run by run
  make_chunk = train.make_train_chunk
  monkeypatch.setattr(train, "make_train_chunk", lambda *a, **k: (
      lengths.append(k["num_steps"]), make_chunk(*a, **k))[1])
  straight, epochwise = tmp_path / "straight", tmp_path / "epochwise"
  result = train.train_and_evaluate(config(), str(straight))
  assert lengths == [3]   # min(steps_per_dispatch, 3 steps an epoch): one scanned program
  train.train_and_evaluate(config(num_epochs=1), str(epochwise))   # then resumed at epoch 1
  train.train_and_evaluate(config(), str(epochwise))
  assert any(line.startswith("resumed from") and line.endswith("at step 3 (epoch 1)")
             for line in _log_messages(epochwise))
  # one step a dispatch: stopped after step 1 by the time limit, then resumed mid-epoch
  straight1, resumed = tmp_path / "straight1", tmp_path / "resumed"
  train.train_and_evaluate(config(steps_per_dispatch=1), str(straight1))
  interrupted = config(steps_per_dispatch=1)
  interrupted.train.time_limit_minutes = 1e-9   # stops after its first dispatch: step 1
  train.train_and_evaluate(interrupted, str(resumed))
  assert ("time_limit_minutes=1e-09 reached at step 1 (epoch 1, step 1 of 3)"
          in (resumed / "train.log").read_text())
  first = _records(resumed)
  assert [(r["split"], r["epoch"], r["step"]) for r in first] == [("train", 1, 1), ("test", 1, 1)]
  assert int(_latest_state(resumed)["epoch"]) == 0   # epoch 1 is not finished
  train.train_and_evaluate(config(steps_per_dispatch=1), str(resumed))
  assert any(line.startswith("resumed from") and line.endswith("at step 1 (epoch 1, step 1 of 3)")
             for line in _log_messages(resumed))
  records = _records(resumed)
  assert [(r["split"], r["epoch"], r["step"]) for r in records[2:]] == [
      ("train", 1, 3), ("test", 1, 3), ("train", 2, 6), ("test", 2, 6)]
  for uninterrupted, other in ((straight, epochwise), (straight1, resumed)):
    a, b = _latest_state(uninterrupted), _latest_state(other)
    assert int(a["step"]) == int(b["step"]) == 6 and int(a["epoch"]) == int(b["epoch"]) == 2
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  # metrics are real numbers in range and the best checkpoint's metrics are recorded
  assert 0.0 <= result["final"]["IoU"] <= 1.0 and result["final"]["images"] == 6
  best = json.loads((straight / checkpoints.BEST_METRICS_FILE).read_text())
  assert best["IoU"] == max(r["IoU"] for r in _records(straight) if r["split"] == "test")
  assert (straight / "tensorboard").is_dir() and (straight / "config.json").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(prepared_fake_nuaa, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  train.train_and_evaluate(_tiny_config(prepared_fake_nuaa, 1), str(workdir))
  monkeypatch.setitem(losses.LOSSES, "soft_iou", lambda logits, mask, axis_name=None:
                      np.nan * losses.soft_iou_loss(logits, mask, axis_name=axis_name))
  with pytest.raises(train.TrainingDivergedError, match=r"loss is nan at step 2.*step 1\) is kept"):
    train.train_and_evaluate(_tiny_config(prepared_fake_nuaa, 2), str(workdir))
  store = checkpoints.CheckpointStore(workdir)
  assert store.latest_step() == 1
  state = store.latest.restore(1)
  store.close()
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state["params"]))


def test_workdir_of_another_model_is_refused(prepared_fake_nuaa, tmp_path):
  workdir = tmp_path / "run"
  checkpoints.save_config(workdir, _tiny_config(prepared_fake_nuaa))
  with pytest.raises(checkpoints.WorkdirMismatchError, match=r"'acm_unet'.*'acm_fpn'"):
    train.train_and_evaluate(_tiny_config(prepared_fake_nuaa, model=acm_fpn), str(workdir))


def test_bad_batch_size_is_named(prepared_fake_nuaa, tmp_path):
  config = _tiny_config(prepared_fake_nuaa)
  config.train.batch_size = 64
  with pytest.raises(ValueError, match="batch_size=64"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_main_command_trains_and_evaluates(prepared_fake_nuaa, tmp_path):
  raw, data_dir = prepared_fake_nuaa
  workdir = tmp_path / "cli"
  # _tiny_config's network and data: the subprocesses find its programs in the compilation cache.
  command = [sys.executable, "-m", "irst_jax.main", "--config=configs/acm_unet.py:nuaa_sirst,smoke",
             f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
             f"--config.dataset.manual_dir={raw}", "--config.train.num_epochs=1",
             "--config.model.channels=(4, 8, 8, 16)", "--config.model.num_blocks=1",
             "--config.dataset.crop_size=32", "--config.dataset.pad_multiple=96"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "final: IoU" in out.stdout and "best (step 1)" in out.stdout
  evaluated = subprocess.run([sys.executable, "-m", "irst_jax.main", "--mode=eval",
                              f"--workdir={workdir}", "--protocol=basicirstd_2023"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=900)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  best = json.loads((workdir / checkpoints.BEST_METRICS_FILE).read_text())
  assert f"IoU {best['IoU']:.4f}" in evaluated.stdout   # the protocol changes Fa only
  report = json.loads((workdir / "eval" / "best_test_basicirstd_2023" / "metrics.json").read_text())
  assert report["protocol"] == "basicirstd_2023"


def test_eval_network_on_own_size_equals_per_size_evaluation(prepared_fake_nuaa):
  """With `eval_network_padding='own'`, a single canvas gives the numbers and score maps of
  per-size evaluation (one canvas per padded size) exactly; the network on the canvas does not."""
  def evaluate(max_canvases, network_padding):
    config = _tiny_config(prepared_fake_nuaa)
    config.dataset.pad_multiple = 32          # the fake test images fall into several sizes
    config.dataset.max_eval_canvases = max_canvases
    config.dataset.eval_network_padding = network_padding
    config.eval.threshold = 0.3
    model = models.create_model(config.model, axis_name=train.AXIS)
    tx, _ = optim.create_optimizer(config.optim, 1, 1)
    state = train.create_train_state(model, config, tx, (1, 32, 32, 1))
    values, _, kept = train.evaluate(train.make_eval_step(model, config.eval, curves=True),
                                     train.replicate(state), config, "test", keep_images=6)
    return values, {k["name"]: k["score"] for k in kept}

  per_size, per_size_scores = evaluate(100, "canvas")
  own, own_scores = evaluate(1, "own")
  canvas_values, canvas_scores = evaluate(1, "canvas")
  assert per_size == own
  assert per_size_scores.keys() == own_scores.keys() and len(own_scores) >= 5
  for name, score in per_size_scores.items():
    assert 0.0 < score.min() < score.max() < 1.0   # not saturated: the comparison means something
    np.testing.assert_array_equal(own_scores[name], score)
  # The check can fail: on the one canvas the network sees more padding and its scores move.
  assert max(float(np.abs(canvas_scores[n] - s).max()) for n, s in per_size_scores.items()) > 1e-6
