"""irst_jax.score: scoring a folder of PNG predictions on a (fake) dataset split."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import default
from irst_jax import metrics, score
from tests.conftest import FAKE_SPLITS

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPS = np.spacing(1)


def _masks(raw: pathlib.Path, names):
  return {n: np.asarray(Image.open(raw / "masks" / f"{n}_pixels0.png")) > 0 for n in names}


def _write(folder: pathlib.Path, arrays: dict, mode="L"):
  folder.mkdir(parents=True, exist_ok=True)
  for name, a in arrays.items():
    Image.fromarray(a.astype(np.uint8), "L").convert(mode).save(folder / f"{name}.png")


def _score(folder, prepared):
  raw, data_dir = prepared
  cfg = score.dataset_config("nuaa_sirst", "50_50", str(data_dir), str(raw))
  return score.score_folder(folder, cfg, "test", default.get_base_config().eval, batch_size=4)


def test_perfect_and_shifted_predictions(prepared_fake_nuaa, tmp_path):
  raw, _ = prepared_fake_nuaa
  names = FAKE_SPLITS["50_50"]["test"]
  masks = _masks(raw, names)
  _write(tmp_path / "perfect", {n: m * 255 for n, m in masks.items()})
  values, _ = _score(tmp_path / "perfect", prepared_fake_nuaa)
  assert values["images"] == len(names)
  for key in ("IoU", "nIoU", "Pd", "AUC", "AP", "F-measure", "F-area"):
    assert values[key] == pytest.approx(1.0, abs=1e-9), key
  assert values["Fa"] == 0.0

  # 0/1 PNGs (read as binary) shifted right by one pixel, plus a false alarm in image 0.
  shifted = {n: np.roll(m, 1, axis=1) for n, m in masks.items()}
  shifted[names[0]][0, 0] = True
  _write(tmp_path / "shifted", shifted)
  values, _ = _score(tmp_path / "shifted", prepared_fake_nuaa)
  inter = sum((shifted[n] & masks[n]).sum() for n in names)
  union = sum((shifted[n] | masks[n]).sum() for n in names)
  pred = sum(shifted[n].sum() for n in names)
  assert values["IoU"] == pytest.approx(inter / (EPS + union), rel=1e-12)
  assert values["nIoU"] == pytest.approx(np.mean([
      (shifted[n] & masks[n]).sum() / (EPS + (shifted[n] | masks[n]).sum()) for n in names]))
  assert values["F-measure"] == pytest.approx(float(metrics.f_measure(
      inter, pred - inter, union - pred)), rel=1e-12)
  pixels = sum(m.size for m in masks.values())
  assert values["Fa"] >= 1 / pixels and values["Pd"] == 1.0


def test_bad_folders_are_named(prepared_fake_nuaa, tmp_path):
  raw, _ = prepared_fake_nuaa
  names = FAKE_SPLITS["50_50"]["test"]
  masks = _masks(raw, names)
  _write(tmp_path / "missing", {n: masks[n] * 255 for n in names[1:]})
  with pytest.raises(ValueError, match=rf"1 prediction\(s\) missing, e.g. {names[0]}.png"):
    _score(tmp_path / "missing", prepared_fake_nuaa)
  _write(tmp_path / "extra", {**{n: masks[n] * 255 for n in names}, "Misc_999": masks[names[0]]})
  with pytest.raises(ValueError, match=r"not in the split, e.g. Misc_999.png"):
    _score(tmp_path / "extra", prepared_fake_nuaa)
  wrong = {n: masks[n] * 255 for n in names}
  wrong[names[2]] = np.pad(wrong[names[2]], ((0, 0), (0, 3)))
  h, w = masks[names[2]].shape
  _write(tmp_path / "wrong", wrong)
  with pytest.raises(ValueError, match=rf"{names[2]}.png is {w + 3}x{h}, image is {w}x{h}"):
    _score(tmp_path / "wrong", prepared_fake_nuaa)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    _score(tmp_path / "nowhere", prepared_fake_nuaa)


def test_command_prints_table(prepared_fake_nuaa, tmp_path):
  raw, data_dir = prepared_fake_nuaa
  names = FAKE_SPLITS["50_50"]["test"]
  _write(tmp_path / "pred", {n: m * 255 for n, m in _masks(raw, names).items()}, mode="RGB")
  out = subprocess.run(
      [sys.executable, "-m", "irst_jax.score", f"--predictions={tmp_path / 'pred'}",
       "--dataset=nuaa_sirst", "--split=test", f"--data_dir={data_dir}", f"--manual_dir={raw}",
       f"--out_dir={tmp_path / 'report'}"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| pred | 1.0000 | 1.0000 | 1.0000 | 0.00 | 1.0000 | 1.0000 | 1.0000 | 1.0000 |" in out.stdout
  assert (tmp_path / "report" / "roc.png").exists() and (tmp_path / "report" / "pr.png").exists()
