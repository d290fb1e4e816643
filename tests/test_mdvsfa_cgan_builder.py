"""Tests of the mdvsfa_cgan TFDS builder on a tiny fake dataset (and the real one if present)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from irst_jax.data import sources
from irst_jax.data.builders import BUILDERS, mdvsfa_cgan
from tests.conftest import (
  MDVSFA_ABSENT,
  MDVSFA_TEST,
  MDVSFA_TEST_SIZES,
  MDVSFA_TRAIN,
  all_examples,
  prepare_builder,
  write_fake_mdvsfa_cgan,
)


def _prepare(raw, data_dir):
  return prepare_builder(mdvsfa_cgan.MdvsfaCgan, raw, data_dir, "official")


_all = all_examples


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  base = tmp_path_factory.mktemp("fake_mdvsfa")
  raw = write_fake_mdvsfa_cgan(base / "raw")
  return raw, _prepare(raw, base / "tfds")


def test_registered():
  assert BUILDERS["mdvsfa_cgan"] is mdvsfa_cgan.MdvsfaCgan


def test_splits_and_halves(prepared):
  _, builder = prepared
  # 10 training ids -> halves of 5 / 5 (first / second half of the sorted ids).
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 10, "test": 5, "train_half": 5, "val_half": 5}
  data = builder.as_data_source()
  names = {s: sorted(ex["name"].decode() for ex in _all(data[s])) for s in data}
  assert names["train"] == MDVSFA_TRAIN
  assert names["test"] == MDVSFA_TEST
  assert names["train_half"] == MDVSFA_TRAIN[:5]
  assert names["val_half"] == MDVSFA_TRAIN[5:]
  assert builder.info.metadata["absent_training_ids"] == list(MDVSFA_ABSENT)


def test_halves_of_odd_count():
  specs = [mdvsfa_cgan.base.PairSpec(f"{i:06d}", None, None) for i in (4, 0, 2, 1, 3)]
  first, second = mdvsfa_cgan.halves(specs)
  assert [s.name for s in first] == ["000000", "000001", "000002"]
  assert [s.name for s in second] == ["000003", "000004"]


def test_features_values_and_metadata(prepared):
  raw, builder = prepared
  data = builder.as_data_source()
  for ex in _all(data["train"]):
    name = ex["name"].decode()
    assert ex["image"].dtype == np.uint8 and ex["mask"].dtype == np.uint8
    assert ex["image"].shape == ex["mask"].shape == (32, 32, 1)
    with Image.open(raw / "training" / f"{name}_1.png") as f:
      np.testing.assert_array_equal(ex["image"][..., 0], np.asarray(f.convert("L")))
    with Image.open(raw / "training" / f"{name}_2.png") as f:
      np.testing.assert_array_equal(ex["mask"][..., 0], (np.asarray(f) > 0).astype(np.uint8))
  sizes = dict(zip(MDVSFA_TEST, MDVSFA_TEST_SIZES))
  for ex in _all(data["test"]):
    name = ex["name"].decode()
    assert ex["image"].shape == ex["mask"].shape == sizes[name] + (1,)
    with Image.open(raw / "test_gt" / f"{name}.png") as f:
      assert f.mode == "1"
      np.testing.assert_array_equal(ex["mask"][..., 0],
                                    (np.asarray(f.convert("L")) > 0).astype(np.uint8))
    assert ex["mask"].any() and set(np.unique(ex["mask"])) <= {0, 1}
  greys = [np.asarray(Image.open(raw / "training" / f"{n}_1.png").convert("L"), np.float32)
           for n in MDVSFA_TRAIN]
  meta = builder.info.metadata
  assert meta["mean"] == pytest.approx(np.mean([g.mean() for g in greys]), rel=1e-6)
  assert meta["std"] == pytest.approx(np.mean([g.std() for g in greys]), rel=1e-6)
  assert meta["max_train_side"] == 32


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"drop_file": "training/000005_2.png"},
         r"Training image .*training/000005_1\.png has no mask: .*000005_2\.png is missing"),
        ({"drop_file": "training/000008_1.png"},
         r"Training mask .*training/000008_2\.png has no image: .*000008_1\.png is missing"),
        ({"drop_file": "test_gt/00002.png"}, r"Test image .*test_org/00002\.png has no mask"),
        ({"drop_file": "test_org/00004.png"}, r"Test mask .*test_gt/00004\.png has no image"),
        ({"wrong_size_mask": "training/000010_2.png"}, r"training/000010_2\.png has size"),
        ({"corrupt_file": "training/000006_1.png"}, r"Cannot read image .*000006_1\.png"),
        ({"corrupt_file": "test_gt/00001.png"}, r"Cannot read mask .*test_gt/00001\.png"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path, kwargs, fragment):
  raw = write_fake_mdvsfa_cgan(tmp_path / "raw", **kwargs)
  with pytest.raises(sources.InvalidSourceError, match=fragment):
    _prepare(raw, tmp_path / "tfds")


def test_not_found_says_where_to_get_it(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "REPO_ROOT", tmp_path / "repo")
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "env"))
  (tmp_path / "work" / "cwd").mkdir(parents=True)
  monkeypatch.chdir(tmp_path / "work" / "cwd")
  with pytest.raises(sources.DatasetNotFoundError) as e:
    _prepare(None, tmp_path / "tfds")   # no manual dir: searched everywhere else
  msg = str(e.value)
  assert str(tmp_path / "env" / "MDvsFA-cGAN") in msg
  assert str(tmp_path / "shared" / "datasets" / "MDvsFA-cGAN") in msg
  assert "wanghuanphd/MDvsFA_cGAN" in msg
  assert "training/<NNNNNN>_1.png" in msg


def test_env_dir_is_used(tmp_path, monkeypatch):
  write_fake_mdvsfa_cgan(tmp_path / "env")
  monkeypatch.setattr(sources, "REPO_ROOT", tmp_path / "repo")
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "env"))
  assert _prepare(None, tmp_path / "tfds").info.splits["test"].num_examples == 5


_REAL = sources.REPO_ROOT.parent / "shared" / "datasets" / "MDvsFA-cGAN"

# Mean of per-image means / stds of the 9,978 grey training images (shared copy).
MDVSFA_REAL_MEAN = 104.5682
MDVSFA_REAL_STD = 26.8521


@pytest.mark.skipif(not (_REAL / "training").is_dir(), reason=f"{_REAL} absent")
def test_real_dataset(tmp_path):
  b = _prepare(_REAL, tmp_path / "tfds")  # 30-45 s on one core.
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {
      "train": 9978, "test": 100, "train_half": 4989, "val_half": 4989}
  meta = b.info.metadata
  assert meta["absent_training_ids"] == list(mdvsfa_cgan.ABSENT_TRAINING_IDS)
  assert meta["max_train_side"] == 128
  assert meta["mean"] == pytest.approx(MDVSFA_REAL_MEAN, abs=1e-3)
  assert meta["std"] == pytest.approx(MDVSFA_REAL_STD, abs=1e-3)
  test = b.as_data_source("test")
  shapes = {test[i]["image"].shape for i in range(len(test))}
  assert (128, 128, 1) in shapes and len(shapes) > 1
