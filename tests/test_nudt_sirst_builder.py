"""Tests of the nudt_sirst TFDS builder on a tiny fake dataset (and the real one if present)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from irst_jax.data import sources
from irst_jax.data.builders import BUILDERS, nudt_sirst
from tests.conftest import NUDT_SPLITS, prepare_builder, write_fake_nudt_sirst


def _prepare(raw, data_dir):
  return prepare_builder(nudt_sirst.NudtSirst, raw, data_dir, "50_50")

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  base = tmp_path_factory.mktemp("fake_nudt")
  raw = write_fake_nudt_sirst(base / "raw")
  return raw, _prepare(raw, base / "tfds")


def test_registered():
  assert BUILDERS["nudt_sirst"] is nudt_sirst.NudtSirst


def test_splits_features_values_and_metadata(prepared):
  raw, builder = prepared
  expected = NUDT_SPLITS["50_50"]
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      k: len(v) for k, v in expected.items()}
  data = builder.as_data_source()
  for split, names in expected.items():
    examples = [data[split][i] for i in range(len(data[split]))]
    assert sorted(ex["name"].decode() for ex in examples) == sorted(names)
    for ex in examples:
      name = ex["name"].decode()
      assert ex["image"].dtype == np.uint8 and ex["mask"].dtype == np.uint8
      assert ex["image"].shape == ex["mask"].shape == (32, 32, 1)
      with Image.open(raw / "images" / f"{name}.png") as f:
        assert f.mode == "RGB"
        np.testing.assert_array_equal(ex["image"][..., 0], np.asarray(f.convert("L")))
      with Image.open(raw / "masks" / f"{name}.png") as f:
        np.testing.assert_array_equal(ex["mask"][..., 0], (np.asarray(f) > 0).astype(np.uint8))
      assert ex["mask"].any() and set(np.unique(ex["mask"])) <= {0, 1}
  greys = [np.asarray(Image.open(raw / "images" / f"{n}.png").convert("L"), np.float32)
           for n in expected["train"]]
  meta = builder.info.metadata
  assert meta["mean"] == pytest.approx(np.mean([g.mean() for g in greys]), rel=1e-6)
  assert meta["std"] == pytest.approx(np.mean([g.std() for g in greys]), rel=1e-6)
  assert meta["max_train_side"] == 32 and meta["source"] == str(raw)


@pytest.mark.parametrize(
    "kind, name, fragment",
    [
        ("missing_mask", "000002", r"masks/000002\.png"),
        ("wrong_size_mask", "000006", r"masks/000006\.png has size"),
        ("corrupt_image", "000009", r"Cannot read image file .*images/000009\.png"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path, kind, name, fragment):
  raw = write_fake_nudt_sirst(tmp_path / "raw", **{kind: name})
  with pytest.raises(sources.InvalidSourceError, match=fragment):
    _prepare(raw, tmp_path / "tfds")


def test_duplicate_name_in_split_file(tmp_path):
  raw = write_fake_nudt_sirst(tmp_path / "raw")
  (raw / "50_50" / "test.txt").write_text("000005\n000006\n000005")
  with pytest.raises(sources.InvalidSourceError, match=r"test\.txt lists 1 name.*000005"):
    _prepare(raw, tmp_path / "tfds")


def test_not_found_says_where_to_get_it(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "REPO_ROOT", tmp_path / "repo")
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "env"))
  (tmp_path / "work" / "cwd").mkdir(parents=True)
  monkeypatch.chdir(tmp_path / "work" / "cwd")
  with pytest.raises(sources.DatasetNotFoundError) as e:
    _prepare(None, tmp_path / "tfds")   # no manual dir: searched everywhere else
  msg = str(e.value)
  assert str(tmp_path / "env" / "NUDT-SIRST") in msg
  assert str(tmp_path / "shared" / "datasets" / "NUDT-SIRST") in msg
  assert "YeRen123455/Infrared-Small-Target-Detection" in msg
  assert "50_50/{train,test}.txt" in msg


_REAL = sources.REPO_ROOT.parent / "shared" / "datasets" / "NUDT-SIRST"


@pytest.mark.skipif(not (_REAL / "images").is_dir(), reason=f"{_REAL} absent")
def test_real_dataset(tmp_path):
  b = _prepare(_REAL, tmp_path / "tfds")
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 663, "test": 664}
  assert b.info.metadata["max_train_side"] == 256
  assert b.info.metadata["mean"] == pytest.approx(NUDT_REAL_MEAN, abs=1e-3)
  assert b.info.metadata["std"] == pytest.approx(NUDT_REAL_STD, abs=1e-3)
  ex = b.as_data_source("test")[0]
  assert ex["image"].shape == ex["mask"].shape == (256, 256, 1)


# Mean of per-image means / stds of the 663 grey training images (measured on the shared copy).
NUDT_REAL_MEAN = 108.0228
NUDT_REAL_STD = 33.2143
