"""Tests of the nuaa_sirst TFDS builder on a tiny fake dataset (and the real one if present)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from irst_jax.data import sources
from irst_jax.data.builders import nuaa_sirst
from tests.conftest import FAKE_SPLITS, all_examples, prepare_builder, write_fake_nuaa_sirst


def _prepare(raw, data_dir, config="50_50"):
  return prepare_builder(nuaa_sirst.NuaaSirst, raw, data_dir, config)


_all = all_examples


@pytest.mark.parametrize("config", ["50_50", "acm"])
def test_splits_features_and_values(prepared_fake_nuaa, config):
  raw, data_dir = prepared_fake_nuaa
  builder = nuaa_sirst.NuaaSirst(config=config, data_dir=str(data_dir))
  assert builder.info.file_format.value == "array_record"
  expected = FAKE_SPLITS[config]
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      k: len(v) for k, v in expected.items()
  }
  sources_ = builder.as_data_source()
  for split, names in expected.items():
    examples = _all(sources_[split])
    got_names = sorted(ex["name"].decode() for ex in examples)
    assert got_names == sorted(names)
    for ex in examples:
      name = ex["name"].decode()
      image, mask = ex["image"], ex["mask"]
      assert image.dtype == np.uint8 and mask.dtype == np.uint8
      assert image.ndim == 3 and image.shape[-1] == 1 and mask.shape == image.shape
      assert set(np.unique(mask)) <= {0, 1} and mask.any()
      with Image.open(raw / "images" / f"{name}.png") as f:
        np.testing.assert_array_equal(image[..., 0], np.asarray(f.convert("L")))
      with Image.open(raw / "masks" / f"{name}_pixels0.png") as f:
        np.testing.assert_array_equal(mask[..., 0], (np.asarray(f) > 0).astype(np.uint8))


@pytest.mark.parametrize("config", ["50_50", "acm"])
def test_mean_std_metadata(prepared_fake_nuaa, config):
  raw, data_dir = prepared_fake_nuaa
  builder = nuaa_sirst.NuaaSirst(config=config, data_dir=str(data_dir))
  greys = []
  for name in FAKE_SPLITS[config]["train"]:
    with Image.open(raw / "images" / f"{name}.png") as f:
      greys.append(np.asarray(f.convert("L"), dtype=np.float32))
  mean = np.mean([g.mean() for g in greys])
  std = np.mean([g.std() for g in greys])
  assert builder.info.metadata["mean"] == pytest.approx(mean, rel=1e-6)
  assert builder.info.metadata["std"] == pytest.approx(std, rel=1e-6)


def test_no_tensorflow_imported(prepared_fake_nuaa):
  raw, data_dir = prepared_fake_nuaa
  nuaa_sirst.NuaaSirst(config="50_50", data_dir=str(data_dir)).as_data_source()["train"][0]
  assert "tensorflow" not in sys.modules


def test_split_file_without_trailing_newline(fake_nuaa_sirst):
  text = (fake_nuaa_sirst / "50_50" / "train.txt").read_text()
  assert not text.endswith("\n")
  assert sources.read_split_file(fake_nuaa_sirst / "50_50" / "train.txt") == (
      FAKE_SPLITS["50_50"]["train"]
  )


def test_masks_with_other_values_are_binarised(tmp_path, no_download):
  raw = write_fake_nuaa_sirst(tmp_path / "raw", mask_values=(0, 7))
  builder = _prepare(raw, tmp_path / "tfds")
  for ex in _all(builder.as_data_source("train")):
    assert set(np.unique(ex["mask"])) == {0, 1}


def test_non_binary_mask_names_the_file(tmp_path, no_download):
  raw = write_fake_nuaa_sirst(tmp_path / "raw")
  path = raw / "masks" / "Misc_4_pixels0.png"
  grey = np.asarray(Image.open(path)).copy()
  grey[0, :3] = [0, 128, 255]
  Image.fromarray(grey).save(path)
  with pytest.raises(sources.InvalidSourceError, match=r"Misc_4_pixels0.png is not binary.*128"):
    _prepare(raw, tmp_path / "tfds")


@pytest.mark.parametrize(
    "kind, name, fragment",
    [
        ("missing_mask", "Misc_2", "Misc_2_pixels0.png"),
        ("wrong_size_mask", "Misc_3", "Misc_3_pixels0.png"),
        ("corrupt_image", "Misc_8", "Misc_8.png"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path, no_download, kind, name, fragment):
  raw = write_fake_nuaa_sirst(tmp_path / "raw", **{kind: name})
  with pytest.raises(sources.InvalidSourceError, match=fragment):
    _prepare(raw, tmp_path / "tfds")


def test_missing_listed_image_names_the_file(tmp_path, no_download):
  raw = write_fake_nuaa_sirst(tmp_path / "raw")
  (raw / "images" / "Misc_10.png").unlink()
  with pytest.raises(sources.InvalidSourceError, match="Misc_10.png"):
    _prepare(raw, tmp_path / "tfds")


def test_not_found_lists_searched_dirs(tmp_path, monkeypatch, no_download):
  monkeypatch.setattr(sources, "REPO_ROOT", tmp_path / "repo")
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "env"))
  work = tmp_path / "work" / "cwd"
  work.mkdir(parents=True)
  monkeypatch.chdir(work)
  with pytest.raises(sources.DatasetNotFoundError) as e:
    _prepare(None, tmp_path / "tfds")   # no manual dir: searched everywhere else
  msg = str(e.value)
  assert str(tmp_path / "env" / "NUAA-SIRST") in msg
  assert str(tmp_path / "shared" / "datasets" / "NUAA-SIRST") in msg
  assert "images/Misc_<N>.png" in msg


def test_env_dir_is_used(tmp_path, monkeypatch, no_download):
  write_fake_nuaa_sirst(tmp_path / "env")
  monkeypatch.setattr(sources, "REPO_ROOT", tmp_path / "repo")
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "env"))
  builder = _prepare(None, tmp_path / "tfds")
  assert builder.info.splits["test"].num_examples == 6


_REAL = sources.REPO_ROOT.parent / "shared" / "datasets" / "NUAA-SIRST"


@pytest.mark.skipif(not (_REAL / "images").is_dir(), reason=f"{_REAL} absent")
def test_real_dataset(tmp_path, no_download):
  b = _prepare(_REAL, tmp_path / "tfds", "50_50")
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 213, "test": 214}
  # mean of per-image means / stds of the 213 grey training images (BasicIRSTD's method)
  assert b.info.metadata["mean"] == pytest.approx(110.6790, abs=1e-3)
  assert b.info.metadata["std"] == pytest.approx(29.3510, abs=1e-3)
  b = _prepare(_REAL, tmp_path / "tfds", "acm")
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {
      "train": 256, "val": 85, "test": 86
  }
  # Misc_111's published mask is larger than its image; the builder resizes it.
  test = b.as_data_source("test")
  ex = next(test[i] for i in range(len(test)) if test[i]["name"] == b"Misc_111")
  assert ex["image"].shape == ex["mask"].shape == (220, 325, 1) and ex["mask"].any()


def test_manual_dir_that_does_not_exist_is_named(tmp_path, no_download):
  with pytest.raises(sources.DatasetNotFoundError,
                     match=rf"manual_dir {tmp_path / 'nowhere'} does not exist; expected the "
                           r"NUAA-SIRST folder \(holding images/\)"):
    _prepare(tmp_path / "nowhere", tmp_path / "tfds")
  (tmp_path / "elsewhere" / "other").mkdir(parents=True)
  with pytest.raises(sources.DatasetNotFoundError,
                     match=rf"manual_dir {tmp_path / 'elsewhere'} holds no NUAA-SIRST data: "
                           rf"expected images/ in {tmp_path / 'elsewhere'} or in "
                           rf"{tmp_path / 'elsewhere' / 'NUAA-SIRST'}"):
    _prepare(tmp_path / "elsewhere", tmp_path / "tfds")
  # the parent of the dataset folder is accepted, as before
  write_fake_nuaa_sirst(tmp_path / "parent")
  assert _prepare(tmp_path / "parent", tmp_path / "tfds").info.splits["train"].num_examples == 6


def test_empty_split_file_is_named(tmp_path, no_download):
  raw = write_fake_nuaa_sirst(tmp_path / "raw")
  (raw / "idx_427" / "val.txt").write_text("\n  \n")
  with pytest.raises(sources.InvalidSourceError,
                     match=r"Split file .*idx_427/val\.txt is empty; expected one image name a line"):
    _prepare(raw, tmp_path / "tfds", "acm")


def test_download_that_hangs_is_abandoned(tmp_path, monkeypatch):
  """Offline, the download is given up after the time limit (here 0.5 s) and the error says
  where to put the files; the hanging call is released when the test ends."""
  import threading
  import time

  release = threading.Event()
  calls = []

  def hang(self, dl_manager):
    calls.append(self.builder_config.name)
    release.wait(60)
    raise OSError("released")

  monkeypatch.setattr(nuaa_sirst.NuaaSirst, "_download_source", hang)
  monkeypatch.setattr(sources, "REPO_ROOT", tmp_path / "repo")
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv(sources.DOWNLOAD_TIMEOUT_ENV, "0.5")
  (tmp_path / "work" / "cwd").mkdir(parents=True)
  monkeypatch.chdir(tmp_path / "work" / "cwd")
  start = time.monotonic()
  try:
    with pytest.raises(sources.DatasetNotFoundError) as e:
      _prepare(None, tmp_path / "tfds", "acm")
  finally:
    release.set()
  elapsed = time.monotonic() - start
  assert calls == ["acm"] and elapsed < 20, elapsed
  msg = str(e.value)
  assert "download failed: TimeoutError: the download did not finish within 0.5 s" in msg
  assert sources.DOWNLOAD_TIMEOUT_ENV in msg and "idx_427/{train,val,test}.txt" in msg
  monkeypatch.setenv(sources.DOWNLOAD_TIMEOUT_ENV, "soon")
  with pytest.raises(ValueError, match=r"IRST_JAX_DOWNLOAD_TIMEOUT_S='soon': expected a positive"):
    sources.download_timeout()
  monkeypatch.delenv(sources.DOWNLOAD_TIMEOUT_ENV)
  assert sources.download_timeout() == sources.DOWNLOAD_TIMEOUT_S == 30.0


def test_call_with_timeout_returns_and_reraises():
  assert sources.call_with_timeout(lambda: 7, 5.0, "sum") == 7
  with pytest.raises(KeyError, match="boom"):
    sources.call_with_timeout(lambda: {}["boom"], 5.0, "lookup")
