"""Shared fixtures: tiny fake NUAA-SIRST, NUDT-SIRST and MDvsFA-cGAN in the official layouts.

NUDT-SIRST and MDvsFA-cGAN: see :func:`write_fake_nudt_sirst` and
:func:`write_fake_mdvsfa_cgan`.

Layout written (under ``<tmp>/NUAA-SIRST``):
  images/Misc_<N>.png            grey content stored as L, RGB, RGBA or P (20..70 px)
  masks/Misc_<N>_pixels0.png     {0, 255}, L, one or two small targets
  masks/Misc_<N>.xml             a stub (ignored by the builder)
  idx_427/{train,val,test}.txt   6 / 3 / 3 names, no trailing newline
  50_50/{train,test}.txt         6 / 6 names, no trailing newline
"""

from __future__ import annotations

import atexit
import gc
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np
import pytest
from PIL import Image

from irst_jax import platform_settings

# The tests run under the XLA CPU flags the command-line entry points set (on CPU only);
# before any computation, so before JAX starts its backend.
platform_settings.apply()

# One persistent compilation cache for the session, shared with the pytest-xdist workers and
# the CLI subprocesses (they inherit the environment): the tests train and evaluate the same
# tiny networks on the same fake data many times. The process that made it removes it.
_JIT_CACHE = os.environ.get("IRST_JAX_TEST_JIT_CACHE")
if _JIT_CACHE is None:
  _JIT_CACHE = os.environ["IRST_JAX_TEST_JIT_CACHE"] = tempfile.mkdtemp(
      prefix="irst_jax_test_jit_cache_")
  atexit.register(shutil.rmtree, _JIT_CACHE, True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _JIT_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", _JIT_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# Random initialisers compile ~8 s per extra draw in one program under the partitionable
# Threefry on jaxlib 0.10 CPU (see `train.create_train_state`); the tests' many `model.init`
# calls use the non-partitionable one, as the library's own initialisation does.
jax.config.update("jax_threefry_partitionable", False)

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


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_executables():
  """Drops JAX's compiled executables after each test module. Every XLA CPU executable holds
  a few memory mappings (about 3 a compile); the suite's thousands of compiles in one
  process otherwise exhaust the kernel's per-process limit (vm.max_map_count, 65,530 by
  default), and the next compile dies with a segmentation fault."""
  yield
  jax.clear_caches()
  gc.collect()


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
  import tensorflow_datasets as tfds

  from irst_jax.data.builders import nuaa_sirst

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


# -- NUDT-SIRST ---------------------------------------------------------------------------

NUDT_NAMES = [f"{i:06d}" for i in range(1, 11)]
NUDT_SPLITS = {"50_50": {"train": NUDT_NAMES[:4], "test": NUDT_NAMES[4:]}}


def _small_targets(rng, h, w, n, value=255):
  mask = np.zeros((h, w), np.uint8)
  for _ in range(n):
    s = int(rng.integers(1, 4))
    y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
    mask[y:y + s, x:x + s] = value
  return mask


def _truncate(path: pathlib.Path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def write_fake_nudt_sirst(
    root: pathlib.Path,
    *,
    size: int = 32,
    missing_mask: str | None = None,
    wrong_size_mask: str | None = None,
    corrupt_image: str | None = None,
    seed: int = 0,
) -> pathlib.Path:
  """Writes a fake NUDT-SIRST into ``root/NUDT-SIRST`` (official layout); returns it.

  10 images ``images/000001.png``.. stored RGB (grey content), ``size`` x ``size``; masks
  ``masks/<name>.png`` {0, 255} L with one or two targets; ``50_50/{train,test}.txt``
  (4 / 6 names, no trailing newline). The keyword arguments break one named example as
  in :func:`write_fake_nuaa_sirst`.
  """
  rng = np.random.default_rng(seed)
  d = pathlib.Path(root) / "NUDT-SIRST"
  (d / "images").mkdir(parents=True, exist_ok=True)
  (d / "masks").mkdir(parents=True, exist_ok=True)
  for k, name in enumerate(NUDT_NAMES):
    grey = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
    Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB").save(
        d / "images" / f"{name}.png")
    if name == corrupt_image:
      _truncate(d / "images" / f"{name}.png")
    mask = _small_targets(rng, size, size, 1 + k % 2)
    if name == wrong_size_mask:
      mask = np.pad(mask, ((0, 0), (0, 2)))
    if name != missing_mask:
      Image.fromarray(mask, "L").save(d / "masks" / f"{name}.png")
  for split, names in NUDT_SPLITS["50_50"].items():
    _write_list(d / "50_50" / f"{split}.txt", names)
  return d


# -- MDvsFA-cGAN --------------------------------------------------------------------------

#: Fake training ids: 000000..000011 without 000003 and 000007 (absent, like the 22
#: published gaps), and fake test names 00000..00004 with sizes of their own.
MDVSFA_ABSENT = ("000003", "000007")
MDVSFA_TRAIN = [f"{i:06d}" for i in range(12) if f"{i:06d}" not in MDVSFA_ABSENT]
MDVSFA_TEST = [f"{i:05d}" for i in range(5)]
MDVSFA_TEST_SIZES = [(20, 30), (32, 32), (41, 25), (32, 32), (17, 50)]


def write_fake_mdvsfa_cgan(
    root: pathlib.Path,
    *,
    size: int = 32,
    drop_file: str | None = None,
    wrong_size_mask: str | None = None,
    corrupt_file: str | None = None,
    seed: int = 0,
) -> pathlib.Path:
  """Writes a fake MDvsFA-cGAN into ``root/MDvsFA-cGAN`` (official layout); returns it.

  ``training/<id>_1.png`` RGB (grey content) and ``<id>_2.png`` {0, 255} L, ``size`` x
  ``size``, for the 10 ids of ``MDVSFA_TRAIN``; ``test_org/<n>.png`` RGB and
  ``test_gt/<n>.png`` mode "1" for the 5 names of ``MDVSFA_TEST``; a stray ``Thumbs.db``.

  Args:
    root: parent directory.
    drop_file: a path relative to the dataset folder not to write (e.g.
      ``"training/000005_2.png"``).
    wrong_size_mask: a relative mask path written 2 px wider than its image.
    corrupt_file: a relative path written truncated.
    seed: numpy seed.
  """
  rng = np.random.default_rng(seed)
  d = pathlib.Path(root) / "MDvsFA-cGAN"
  for sub in ("training", "test_org", "test_gt"):
    (d / sub).mkdir(parents=True, exist_ok=True)
  (d / "training" / "Thumbs.db").write_bytes(b"not an image")

  def write(rel, img: Image.Image):
    if rel == drop_file:
      return
    img.save(d / rel)
    if rel == corrupt_file:
      _truncate(d / rel)

  def pair(img_rel, mask_rel, h, w, k, mask_mode):
    grey = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    write(img_rel, Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB"))
    mask = _small_targets(rng, h, w, 1 + k % 2)
    if mask_rel == wrong_size_mask:
      mask = np.pad(mask, ((0, 0), (0, 2)))
    write(mask_rel, Image.fromarray(mask, "L").convert(mask_mode))

  for k, i in enumerate(MDVSFA_TRAIN):
    pair(f"training/{i}_1.png", f"training/{i}_2.png", size, size, k, "L")
  for k, (n, (h, w)) in enumerate(zip(MDVSFA_TEST, MDVSFA_TEST_SIZES)):
    pair(f"test_org/{n}.png", f"test_gt/{n}.png", h, w, k, "1")
  return d


def prepare_builder(builder_cls, raw, data_dir, config):
  """Builds `builder_cls(config)` into `data_dir` from the raw folder `raw` (or the usual
  source lookup when `raw` is None) and returns the builder."""
  import tensorflow_datasets as tfds

  builder = builder_cls(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=str(raw) if raw else None),
  )
  return builder


def all_examples(source):
  """Every example of a TFDS data source, in order."""
  return [source[i] for i in range(len(source))]
