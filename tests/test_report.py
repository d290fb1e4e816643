"""irst_jax.evaluation.report (plots, grid, metrics.json) and --mode=eval's report on a tiny workdir."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from irst_jax import checkpoints, train
from irst_jax.evaluation import curves, metrics, report, tables
from tests.test_main import _tiny_config


def _eval_config():
  return ml_collections.ConfigDict(dict(threshold=0.5, distance_threshold=3.0, max_targets=8))


def test_detection_maps_and_grid(tmp_path):
  # Target A (2, 2) detected by a prediction at (2, 3); target B (10, 10) missed;
  # predicted blob at (6, 12)-(6, 13) is a false alarm.
  gt = np.zeros((16, 16), bool)
  gt[2, 2] = gt[10, 10] = True
  score = np.zeros((16, 16), np.float32)
  score[2, 3] = 0.9
  score[6, 12:14] = 0.8
  maps = {k: np.asarray(v) for k, v in metrics.detection_maps(score > 0.5, gt).items()}
  assert np.argwhere(maps["detected"]).tolist() == [[2, 3]]
  assert np.argwhere(maps["false_alarm"]).tolist() == [[6, 12], [6, 13]]
  assert np.argwhere(maps["missed"]).tolist() == [[10, 10]]
  examples = [{"name": "a", "image": score, "mask": gt, "score": score}] * 2
  report.qualitative_grid(examples, tmp_path / "grid.png", _eval_config())
  w, h = Image.open(tmp_path / "grid.png").size
  assert w > 600 and h > 400  # 2 rows x 3 panels
  with pytest.raises(ValueError, match="at least one"):
    report.qualitative_grid([], tmp_path / "x.png", _eval_config())


def test_write_report_files(tmp_path):
  acc = curves.CurveAccumulator((0.3, 0.7))
  acc.update(np.array([[0, 1, 3, 6], [50, 5, 1, 0]]),
             {k: np.ones((2, 1)) * (k != "target_overflow") for k in curves._SWEEP_KEYS})
  res = acc.result()
  values = {"IoU": 0.5, "Pd": float("nan")}
  report.write_report(tmp_path, values, res, (), _eval_config(), title="t")
  record = json.loads((tmp_path / "metrics.json").read_text())
  assert record["metrics"] == {"IoU": 0.5, "Pd": None}
  assert record["curves"]["AUC"] == pytest.approx(res["AUC"])
  assert len(record["curves"]["roc"]["fpr"]) == 5
  assert record["curves"]["target_roc"]["Pd"] == [1.0, 1.0]
  for name in ("roc.png", "pr.png"):
    assert Image.open(tmp_path / name).size[0] > 300


def test_evaluate_workdir_writes_report(prepared_fake_nuaa, tmp_path):
  config = _tiny_config(prepared_fake_nuaa, 1)
  config.eval.roc_thresholds = (0.3, 0.5)
  config.eval.grid_images = 2
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  values = train.evaluate_workdir(str(workdir), "best", out_dir=str(tmp_path / "eval"))
  best = json.loads((workdir / checkpoints.BEST_METRICS_FILE).read_text())
  for key in ("IoU", "nIoU", "Pd", "Fa", "F-measure"):  # the same checkpoint, same code
    assert values[key] == pytest.approx(best[key], rel=1e-9, nan_ok=True), key
  assert 0.0 <= values["AUC"] <= 1.0 and values["images"] == 6
  assert values["F-area"] == pytest.approx(values["AP"] * values["F-measure"], nan_ok=True)
  record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert record["metrics"]["IoU"] == pytest.approx(values["IoU"])
  assert record["curves"]["target_roc"]["thresholds"] == pytest.approx([0.3, 0.5])
  for name in ("roc.png", "pr.png", "grid.png"):
    assert (tmp_path / "eval" / name).exists(), name
  assert "| best |" in tables.markdown_table({"best": values})


def test_import_does_not_load_matplotlib():
  """matplotlib is imported by the functions that draw, not by importing the report (or
  training, which imports it)."""
  script = ("import sys\nimport irst_jax.evaluation.report, irst_jax.train\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"
