"""Several seeds in one program (`train.num_seeds`): equal to separate runs, records, export."""
from __future__ import annotations

import itertools
import json
import math
from typing import Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from irst_jax import errors, models, optim, train
from irst_jax.data import device_data
from irst_jax.evaluation import seeds, tables
from irst_jax.models import layers


class TinyNet(nn.Module):
  """conv3x3 - synchronised BatchNorm - ReLU - ACM's FCN head (BatchNorm, dropout): the parts
  of a network the replicas must keep apart, compiled in seconds."""
  width: int = 8
  head_dropout: float = 0.3
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = layers.batch_norm(train, self.axis_name)
    y = nn.relu(norm(name="bn0")(layers.conv(self.width, 3, name="conv0")(x)))
    return layers.FCNHead(1, self.head_dropout, norm, name="head")(y, train)


@pytest.fixture
def tiny_model(monkeypatch):
  """The model config of `TinyNet`, registered as 'tiny_seeds' for this test."""
  monkeypatch.setitem(models.MODELS, "tiny_seeds", TinyNet)
  return ml_collections.ConfigDict({"name": "tiny_seeds", "in_channels": 1, "width": 8,
                                    "head_dropout": 0.3})


def _tiny_model_config(model_config):
  from configs import acm_unet

  config = acm_unet.get_config()
  config.model = model_config
  config.optim.learning_rate = 0.01   # Adam: the steps move the parameters well above 1e-5
  return config


def _fake_split(crop):
  rng = np.random.default_rng(0)
  sizes = ((40, 36), (20, 50), (33, 33), (30, 20), (64, 40), (32, 32))   # 3 steps of 2
  images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in sizes]
  masks = [(rng.random(im.shape) > 0.97).astype(np.uint8) for im in images]
  return device_data.from_examples(images, masks, crop)


def test_two_seeds_equal_two_single_seed_runs(tiny_model):
  """num_seeds = 2 from seed 42, vmapped or unrolled: replica i's parameters, BatchNorm
  statistics, optimiser state and losses after 3 steps equal those of a run of seed 42 + i
  (own init, dropout and data order)."""
  config = _tiny_model_config(tiny_model)
  crop, batch, epoch, seed = 32, 2, 1, 42
  data = _fake_split(crop)
  settings = device_data.Augmentation(crop=crop, center_prob=0.5, flips=True, shuffle=True,
                                      mean=(100.0,), std=(40.0,))
  model = models.create_model(config.model, axis_name=train.AXIS)
  tx, schedule = optim.create_optimizer(config.optim, 3, 10)
  devices = jax.local_devices()[:1]
  on_devices = device_data.put_on_devices(data, devices)

  def run(seed_, num_seeds, seed_batching=None):
    config.train.seed, config.train.num_seeds = seed_, num_seeds
    state = train.create_train_state(model, config, tx, (1, crop, crop, 1))
    chunk = train.make_train_chunk(model, config.train.loss, schedule, settings, num_steps=3,
                                   global_batch=batch, seed=seed_, devices=devices,
                                   num_seeds=num_seeds, seed_batching=seed_batching)
    out, metrics = chunk(train.replicate(state, devices), on_devices, epoch, 0)
    return state, train._first_replica(out), np.asarray(metrics["loss"][0])

  singles = [run(seed + i, 1) for i in range(2)]
  # the replicas differ from the start (own initialisation) and train apart
  assert any(not np.allclose(a, b) for a, b in zip(
      *[jax.tree_util.tree_leaves(s[0].params) for s in singles]))
  for batching, i in itertools.product(("vmap", "unrolled"), range(2)):
    if i == 0:
      start, both, both_losses = run(seed, 2, batching)
      assert both_losses.shape == (3, 2) and int(both.step) == 3
    single_start, single, single_losses = singles[i]
    np.testing.assert_allclose(both_losses[:, i], single_losses, rtol=1e-5, atol=1e-5)
    for name in ("params", "batch_stats", "opt_state", "rng"):
      for a, b in zip(jax.tree_util.tree_leaves(getattr(train.seed_replica(both, i), name)),
                      jax.tree_util.tree_leaves(getattr(single, name))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{batching}: seed {i} {name}")
    for a, b in zip(jax.tree_util.tree_leaves(train.seed_replica(start, i).params),
                    jax.tree_util.tree_leaves(single_start.params)):
      np.testing.assert_array_equal(a, b)   # the same initialisation, bit for bit
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
        jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(single_start.params)))
    assert moved > 1e-3   # 100x the tolerance: the comparison means something


def test_summary_keys_and_values():
  """Mean, sample standard deviation (ddof 1) and per-seed keys, by hand."""
  record = seeds.summarize([{"IoU": 0.4, "Fa": 1e-5, "images": 6.0},
                            {"IoU": 0.6, "Fa": 3e-5, "images": 6.0}])
  assert record["IoU"] == pytest.approx(0.5)
  assert record["IoU_std"] == pytest.approx(math.sqrt(0.02))   # ((0.1^2 + 0.1^2) / 1) ** 0.5
  assert record["Fa"] == pytest.approx(2e-5) and record["Fa_std"] == pytest.approx(math.sqrt(2e-10))
  assert record["images"] == 6.0 and record["images_std"] == 0.0
  assert (record["IoU/seed_0"], record["IoU/seed_1"]) == (0.4, 0.6)
  assert seeds.num_seeds(record) == 2 and seeds.best_seed(record) == 1
  assert seeds.seeds_line(record, ("IoU", "Fa")) == (
      "over 2 seeds: IoU 0.5000 +/- 0.1414 (0.4000 0.6000), Fa 20.00e-6 +/- 14.14e-6 "
      "(10.00 30.00)")
  assert tables.markdown_table({"2 seeds": record}, ("IoU", "Fa")) == (
      "| method | IoU | Fa (x1e-6) |\n|---|---|---|\n| 2 seeds | 0.5000 +/- 0.1414 | 20.00 +/- 14.14 |")
  # one replica: std 0, no line; the best of a single-seed record is 0
  single = seeds.summarize([{"IoU": 0.3}])
  assert single == {"IoU": 0.3, "IoU_std": 0.0, "IoU/seed_0": 0.3}
  assert seeds.seeds_line({"IoU": 0.3}) is None and seeds.best_seed({"IoU": 0.3}) == 0
  assert seeds.best_seed({"IoU/seed_0": math.nan, "IoU/seed_1": 0.2, "IoU/seed_2": 0.2}) == 1
  assert seeds.best_seed(None) is None
  with pytest.raises(ValueError, match="replica 1 has metric keys"):
    seeds.summarize([{"IoU": 0.1}, {"nIoU": 0.1}])


def test_config_checks_and_resume(prepared_fake_nuaa):
  """num_seeds < 1 is refused; a resume that changes it is refused in one line, and a saved
  config from before the field resumes as num_seeds = 1."""
  from irst_jax import config_checks
  from tests.test_main import _tiny_config

  config = _tiny_config(prepared_fake_nuaa)
  config.train.num_seeds = 0
  with pytest.raises(config_checks.ConfigError, match=r"train.num_seeds=0: expected an integer >= 1"):
    config_checks.check_training_config(config, 1)
  config.train.num_seeds = 1
  saved = json.loads(config.to_json_best_effort())
  del saved["train"]["num_seeds"]
  config_checks.check_resumable(saved, config, "config.json")   # absent = 1: accepted
  config.train.num_seeds = 2
  with pytest.raises(config_checks.ConfigError,
                     match=r"^cannot resume .* changed train.num_seeds \(1 -> 2\)[^\n]*$"):
    config_checks.check_resumable(saved, config, "config.json")


def test_two_seed_run_records_and_export(prepared_fake_nuaa, tiny_model, tmp_path, monkeypatch):
  """A 2-seed training run: metrics.jsonl and best_metrics.json hold mean, std and per-seed
  values; the checkpoint holds both replicas; export takes one (--seed_index)."""
  from irst_jax import checkpoints
  from irst_jax.serving import export
  from tests.test_main import _records, _tiny_config

  config = _tiny_config(prepared_fake_nuaa)
  config.model = tiny_model
  config.train.batch_size = 2
  config.train.num_seeds = 2
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(config, str(workdir))
  records = _records(workdir)
  test = [r for r in records if r["split"] == "test"][-1]
  for key in ("IoU", "nIoU", "Pd", "Fa"):
    each = [test[f"{key}/seed_0"], test[f"{key}/seed_1"]]
    assert test[key] == pytest.approx(np.mean(each))
    assert test[f"{key}_std"] == pytest.approx(abs(each[0] - each[1]) / math.sqrt(2))
  assert test["IoU/seed_0"] != test["IoU/seed_1"]   # two different replicas
  trained = [r for r in records if r["split"] == "train"][-1]
  assert trained["loss"] == pytest.approx((trained["loss/seed_0"] + trained["loss/seed_1"]) / 2)
  best = json.loads((workdir / checkpoints.BEST_METRICS_FILE).read_text())
  assert best["IoU"] == pytest.approx(test["IoU"]) and "IoU/seed_1" in best
  assert result["final"]["IoU"] == test["IoU"]
  # the checkpoint holds both replicas (leading axis 2)
  store = checkpoints.CheckpointStore(workdir)
  try:
    latest = store.latest.restore(store.latest_step())
  finally:
    store.close()
  kernel = jax.tree_util.tree_leaves(latest["params"])[0]
  assert kernel.shape[0] == 2 and np.ndim(latest["step"]) == 0
  # export: one replica, by default the best in best_metrics; out of range: one clear line
  default_seed = seeds.best_seed(best)
  for index in (None, 1 - default_seed):
    config_, variables, _ = export.load_workdir(workdir, "latest", seed_index=index)
    chosen = default_seed if index is None else index
    assert config_.train.seed_index == chosen
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(variables["params"])[0],
                                  kernel[chosen])
  with pytest.raises(errors.UserError, match=r"^--seed_index=2: .* trained 2 seeds .*0 \.\. 1"):
    export.load_workdir(workdir, "latest", seed_index=2)
  # resume: one more epoch from the 2-replica checkpoint
  config.train.num_epochs = 2
  train.train_and_evaluate(config, str(workdir))
  assert [(r["split"], r["epoch"]) for r in _records(workdir)] == [
      ("train", 1), ("test", 1), ("train", 2), ("test", 2)]
  # --mode=eval: each replica evaluated (here a stand-in evaluation: IoU = the mean of the
  # replica's first kernel, no compilation), the report holds mean, std and each replica, and
  # the curves of the best replica
  store = checkpoints.CheckpointStore(workdir)
  try:
    kernel = jax.tree_util.tree_leaves(store.latest.restore(store.latest_step())["params"])[0]
  finally:
    store.close()
  expected = [float(np.mean(kernel[i])) for i in range(2)]

  def fake_evaluate(eval_step, state, config, split, keep_images=0):
    value = float(np.mean(np.asarray(jax.tree_util.tree_leaves(state.params)[0])[0]))
    return {"IoU": value, "Pd": 2 * value}, {"AUC": value}, []

  monkeypatch.setattr(train, "evaluate", fake_evaluate)
  values = train.evaluate_workdir(str(workdir), "latest", out_dir=str(tmp_path / "report"))
  assert [values["IoU/seed_0"], values["IoU/seed_1"]] == pytest.approx(expected, abs=1e-7)
  assert values["IoU"] == pytest.approx(np.mean(expected), abs=1e-7)
  assert values["Pd_std"] == pytest.approx(2 * abs(expected[0] - expected[1]) / math.sqrt(2))
  written = json.loads((tmp_path / "report" / "metrics.json").read_text())
  best = int(np.argmax(expected))
  assert written["metrics"]["IoU/seed_1"] == pytest.approx(expected[1], abs=1e-7)
  assert written["curves"]["AUC"] == pytest.approx(expected[best], abs=1e-7)
  assert written["title"].endswith(f"2 seeds (curves and grid: seed {best})")


def test_predict_seed_index_needs_a_workdir(tmp_path):
  """An exported detector holds one replica: --seed_index is refused in one line."""
  from irst_jax.serving import detector, predict

  (tmp_path / detector.MANIFEST_FILE).write_text("{}")
  with pytest.raises(errors.UserError, match=r"^--seed_index=1: .* exported detector"):
    predict.load_detector(tmp_path, seed_index=1)
