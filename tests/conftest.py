"""Shared fixtures: a tiny fake NUAA-SIRST in the official layout.

Layout written (under ``<tmp>/NUAA-SIRST``):
  images/Misc_<N>.png            grey content stored as L, RGB, RGBA or P (20..70 px)
  masks/Misc_<N>_pixels0.png     {0, 255}, L, one or two small targets
  masks/Misc_<N>.xml             a stub (ignored by the builder)
  idx_427/{train,val,test}.txt   6 / 3 / 3 names, no trailing newline
  50_50/{train,test}.txt         6 / 6 names, no trailing newline
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image
import pytest

FAKE_NAMES = [f"Misc_{i}" for i in range(1, 13)]
FAKE_SPLITS = {
    "50_50": {"train": FAKE_NAMES[:6], "test": FAKE_NAMES[6:]},
    "acm": {"train": FAKE_NAMES[:6], "val": FAKE_NAMES[6:9], "test": FAKE_NAMES[9:]},
}
_MODES = ["L", "RGB", "RGBA", "P"]


def _write_list(path: pathlib.Path, names):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(names), encoding="utf-8")  # No trailing newline.


def write_fake_nuaa_sirst(
    root: pathlib.Path,
    *,
    missing_mask: str | None = None,
    wrong_size_mask: str | None = None,
    corrupt_image: str | None = None,
    mask_values: tuple[int, int] = (0, 255),
    seed: int = 0,
) -> pathlib.Path:
  """Writes the fake dataset into ``root/NUAA-SIRST`` and returns that folder.

  Args:
    root: parent directory.
    missing_mask: name whose mask file is not written.
    wrong_size_mask: name whose mask is 3 px taller than its image.
    corrupt_image: name whose image PNG is truncated.
    mask_values: (background, target) values written in the masks.
    seed: numpy seed of the contents and sizes.
  """
  rng = np.random.default_rng(seed)
  d = pathlib.Path(root) / "NUAA-SIRST"
  (d / "images").mkdir(parents=True, exist_ok=True)
  (d / "masks").mkdir(parents=True, exist_ok=True)
  for k, name in enumerate(FAKE_NAMES):
    h, w = (int(v) for v in rng.integers(20, 71, size=2))
    grey = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    mode = _MODES[k % len(_MODES)]
    if mode == "L":
      img = Image.fromarray(grey, "L")
    else:
      rgb = np.stack([grey, (grey // 2), 255 - grey], axis=-1).astype(np.uint8)
      img = Image.fromarray(rgb, "RGB")
      if mode == "RGBA":
        img = img.convert("RGBA")
      elif mode == "P":
        img = img.convert("P", palette=Image.ADAPTIVE)
    img_path = d / "images" / f"{name}.png"
    img.save(img_path)
    if name == corrupt_image:
      data = img_path.read_bytes()
      img_path.write_bytes(data[: len(data) // 2])

    mask = np.full((h, w), mask_values[0], np.uint8)
    for _ in range(1 + k % 2):  # One or two targets of 1..3 px.
      s = int(rng.integers(1, 4))
      y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
      mask[y:y + s, x:x + s] = mask_values[1]
    if name == wrong_size_mask:
      mask = np.pad(mask, ((0, 3), (0, 0)))
    if name != missing_mask:
      Image.fromarray(mask, "L").save(d / "masks" / f"{name}_pixels0.png")
    (d / "masks" / f"{name}.xml").write_text("<annotation/>")

  for rel, names in [
      ("idx_427/train.txt", FAKE_SPLITS["acm"]["train"]),
      ("idx_427/val.txt", FAKE_SPLITS["acm"]["val"]),
      ("idx_427/test.txt", FAKE_SPLITS["acm"]["test"]),
      ("50_50/train.txt", FAKE_SPLITS["50_50"]["train"]),
      ("50_50/test.txt", FAKE_SPLITS["50_50"]["test"]),
  ]:
    _write_list(d / rel, names)
  return d


@pytest.fixture
def fake_nuaa_sirst(tmp_path) -> pathlib.Path:
  """A fresh, valid fake NUAA-SIRST; returns its folder."""
  return write_fake_nuaa_sirst(tmp_path / "raw")


@pytest.fixture
def no_download(monkeypatch):
  """Stops the NUAA-SIRST builder from reaching the network."""
  from irst_jax.data.builders import nuaa_sirst

  monkeypatch.setattr(nuaa_sirst.NuaaSirst, "ALLOW_DOWNLOAD", False)


@pytest.fixture(scope="session")
def prepared_fake_nuaa(tmp_path_factory):
  """(raw folder, tfds data_dir) of a fake NUAA-SIRST prepared once for the session."""
  from irst_jax.data.builders import nuaa_sirst
  import tensorflow_datasets as tfds

  base = tmp_path_factory.mktemp("fake_nuaa")
  raw = write_fake_nuaa_sirst(base / "raw")
  data_dir = base / "tfds"
  old = nuaa_sirst.NuaaSirst.ALLOW_DOWNLOAD
  nuaa_sirst.NuaaSirst.ALLOW_DOWNLOAD = False
  try:
    for cfg in ("50_50", "acm"):
      nuaa_sirst.NuaaSirst(config=cfg, data_dir=str(data_dir)).download_and_prepare(
          file_format="array_record",
          download_config=tfds.download.DownloadConfig(manual_dir=str(raw)),
      )
  finally:
    nuaa_sirst.NuaaSirst.ALLOW_DOWNLOAD = old
  return raw, data_dir
