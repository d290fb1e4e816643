"""Tests of irst_jax.data.stats on images with known targets, and of its command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from irst_jax.data import stats
from tests.conftest import NUDT_NAMES, write_fake_nudt_sirst


def _image_a():
  """4 x 5 image with grey levels 0, 10, ..., 190 in raster order and three targets."""
  image = (np.arange(20, dtype=np.uint8) * 10).reshape(4, 5, 1)
  mask = np.zeros((4, 5, 1), np.uint8)
  mask[0, 0] = mask[1, 1] = 1   # diagonal neighbours: one 8-connected target, max grey 60
  mask[0, 3] = mask[0, 4] = 1   # second target, max grey 40
  mask[3, 4] = 1                # third target, the brightest pixel (190)
  return image, mask


def test_image_targets_exact():
  image, mask = _image_a()
  got = stats.image_targets(image, mask)
  # Raster order of the targets' first pixels. Ranks: #(pixels <= max) / 20.
  assert got == [
      stats.Target(area=2, area_percent=10.0, brightness_rank=35.0),   # 7 pixels <= 60
      stats.Target(area=2, area_percent=10.0, brightness_rank=25.0),   # 5 pixels <= 40
      stats.Target(area=1, area_percent=5.0, brightness_rank=100.0),
  ]


def test_ties_count_as_at_or_below_and_2d_inputs():
  image = np.full((3, 3), 7, np.uint8)
  mask = np.zeros((3, 3), np.uint8)
  mask[1, 1] = 255
  (t,) = stats.image_targets(image, mask)
  assert t.area == 1 and t.brightness_rank == 100.0
  assert t.area_percent == pytest.approx(100.0 / 9)


def test_split_statistics_and_table(tmp_path):
  image_a, mask_a = _image_a()
  flat = {"image": np.full((3, 3, 1), 7, np.uint8), "mask": np.eye(3, dtype=np.uint8)[..., None],
          "name": b"flat"}
  empty = {"image": np.zeros((2, 2, 1), np.uint8), "mask": np.zeros((2, 2, 1), np.uint8),
           "name": b"empty"}
  a = {"image": image_a, "mask": mask_a, "name": b"a"}
  st = stats.split_statistics({"train": [a, flat], "test": [empty], "train_half": [a]})
  assert list(st) == ["train", "test", "train_half", "all"]
  assert st["train"].num_images == 2 and st["train"].targets_per_image == [3, 1]
  assert st["test"].targets_per_image == [0] and st["test"].targets == []
  # 'all' counts the image named 'a' once although two splits hold it.
  allst = st["all"]
  assert allst.num_images == 3
  assert allst.sizes == {(4, 5): 1, (3, 3): 1, (2, 2): 1}
  assert allst.targets_per_image == [3, 1, 0]
  np.testing.assert_array_equal(allst.areas, [2, 2, 1, 3])          # eye(3): one diagonal target
  np.testing.assert_allclose(allst.brightness_ranks, [35.0, 25.0, 100.0, 100.0])
  np.testing.assert_allclose(allst.area_percents, [10.0, 10.0, 5.0, 100.0 / 3])

  table = stats.format_table(st, title="fake")
  lines = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]]
           for line in table.splitlines() if "|" in line}
  assert lines[""] == ["train", "test", "train_half", "all"]
  assert lines["images"] == ["2", "1", "1", "3"]
  assert lines["targets"] == ["4", "0", "3", "4"]
  assert lines["images with 1 targets"] == ["50.0%", "0.0%", "0.0%", "33.3%"]
  assert lines["brightest in image (rank 100)"] == ["50.0%", "-", "33.3%", "50.0%"]
  assert lines["target size px, max"] == ["3", "-", "2", "3"]

  paths = stats.save_histograms(st, tmp_path / "png", prefix="fake")
  assert sorted(p.name for p in paths) == sorted(
      f"fake_{k}.png" for k in ("targets_per_image", "target_size_pixels",
                                "target_area_percent", "brightness_rank"))
  for p in paths:
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_on_fake_nudt(tmp_path):
  raw = write_fake_nudt_sirst(tmp_path / "raw")
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "irst_jax.data.stats", "--dataset=nudt_sirst",
       f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={raw}", f"--out_dir={out}"],
      capture_output=True, text=True, check=False, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "nudt_sirst / 50_50" in proc.stdout
  images_row = next(line for line in proc.stdout.splitlines() if line.startswith("images "))
  assert [c.strip() for c in images_row.split("|")[1:]] == ["6", "4", str(len(NUDT_NAMES))]
  assert len(list(out.glob("nudt_sirst_50_50_*.png"))) == 4
