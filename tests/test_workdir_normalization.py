"""A workdir keeps the normalisation statistics it trained with (normalization.json): evaluation,
export and predict use them, not those of whatever copy of the dataset is found later."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from irst_jax import checkpoints, train
from irst_jax.data import pipeline
from irst_jax.serving import export, predict
from tests.conftest import FAKE_SPLITS, write_fake_nuaa_sirst
from tests.test_main import _tiny_config


def _hand_mean_std(raw):
  """BasicIRSTD's statistics of the fake 50_50 train split, from the PNG files: mean of
  per-image means and of per-image stds of the grey (convert('L')) images."""
  images = [np.asarray(Image.open(raw / "images" / f"{n}.png").convert("L"), np.float32)
            for n in FAKE_SPLITS["50_50"]["train"]]
  return float(np.mean([x.mean() for x in images])), float(np.mean([x.std() for x in images]))


class _Stop(Exception):
  pass


def test_workdir_keeps_its_training_statistics(tmp_path, no_download, monkeypatch, caplog):
  raw = write_fake_nuaa_sirst(tmp_path / "raw", seed=0)
  data_dir = tmp_path / "tfds"
  config = _tiny_config((raw, data_dir))
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  stored = json.loads((workdir / checkpoints.NORMALIZATION_FILE).read_text())
  mean, std = _hand_mean_std(raw)
  assert stored["kind"] == "dataset" and (stored["dataset"], stored["builder_config"]) == (
      "nuaa_sirst", "50_50")
  assert stored["mean"] == pytest.approx(mean, rel=1e-5) and stored["std"] == pytest.approx(
      std, rel=1e-5)

  # Another copy of the dataset (other images) where the workdir's config finds it.
  shutil.rmtree(raw)
  shutil.rmtree(data_dir)
  write_fake_nuaa_sirst(tmp_path / "raw", seed=1)
  now = pipeline.dataset_info(config.dataset)   # prepares the new copy
  assert abs(now.mean - stored["mean"]) > 0.5, (now.mean, stored["mean"])

  # export, the in-framework forward (predict from a workdir) and eval use the stored numbers
  artifact = export.export_workdir(workdir, tmp_path / "export", platforms=("cpu",))
  manifest = json.loads((artifact / "manifest.json").read_text())
  assert (manifest["normalization"]["mean"], manifest["normalization"]["std"]) == (
      stored["mean"], stored["std"])
  detector = predict.load_detector(workdir)
  assert detector.manifest["normalization"]["mean"] == stored["mean"]
  seen = []

  def spy(dataset_config, **kwargs):
    seen.append(pipeline.dataset_info(dataset_config))
    raise _Stop

  monkeypatch.setattr(pipeline, "create_eval_iterator", spy)
  with pytest.raises(_Stop):
    train.evaluate_workdir(str(workdir))
  assert (seen[0].mean, seen[0].std) == (stored["mean"], stored["std"])

  # a resumed run keeps them too; a change of normalization kind is refused, naming both
  resumed = checkpoints.with_saved_normalization(config, workdir, missing_ok=True)
  assert (resumed.dataset.mean, resumed.dataset.std) == (stored["mean"], stored["std"])
  checkpoints.save_normalization(workdir, pipeline.dataset_info(resumed.dataset))   # same: kept
  other = dataclasses.replace(now, normalization="basicirstd", mean=101.06385, std=34.61961)
  with pytest.raises(checkpoints.NormalizationMismatchError,
                     match=rf"normalization\.json: the run trained with normalization 'dataset' "
                           rf"mean {stored['mean']} .* now gets 'basicirstd' mean 101\.06385"):
    checkpoints.save_normalization(workdir, other)
  with pytest.raises(checkpoints.NormalizationMismatchError,
                     match=rf"set --config\.dataset\.mean={stored['mean']} "
                           rf"--config\.dataset\.std={stored['std']}"):
    checkpoints.save_normalization(workdir, now)
  assert json.loads((workdir / checkpoints.NORMALIZATION_FILE).read_text()) == stored

  # an older workdir without the file falls back to the dataset copy's, with a warning
  (workdir / checkpoints.NORMALIZATION_FILE).unlink()
  with caplog.at_level(logging.WARNING):
    _, manifest = export.workdir_forward(workdir)
  assert manifest["normalization"]["mean"] == now.mean != stored["mean"]
  assert "has no normalization.json" in caplog.text
