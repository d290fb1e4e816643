"""TFDS builder for NUAA-SIRST (a.k.a. SIRST v1; Dai et al., "Asymmetric Contextual
Modulation for Infrared Small Target Detection", WACV 2021; data from YimianDai/sirst).

Examples (all features are ``tfds.features.Tensor``, so no TensorFlow is needed; the
builder is meant to be prepared with ``file_format='array_record'`` and read with
``builder.as_data_source()`` / ``tfds.data_sources``):

* ``image``: uint8 [H, W, 1], grey (PIL ``convert('L')`` of ``images/<name>.png``, whose
  modes are L, RGB, RGBA or P). H and W vary per image (e.g. 240 x 320, 256 x 256).
* ``mask``: uint8 [H, W, 1] with values in {0, 1} (``masks/<name>_pixels0.png`` > 0).
  The published mask of ``Misc_111`` (test split of both configs) is 592 x 400 while its
  image is 325 x 220 (it was annotated on a larger copy); it is resized to the image's
  size with nearest-neighbour. Any other image/mask size mismatch is an error.
* ``name``: text, the file stem, e.g. ``"Misc_12"`` (read back as ``bytes``).

Configs and splits (the published lists, kept exactly):

* ``50_50`` (DNA-Net / BasicIRSTD protocol, ``50_50/{train,test}.txt``):
  train 213, test 214.
* ``acm`` (ACM paper protocol, ``idx_427/{train,val,test}.txt``):
  train 256, val 85, test 86.

Dataset info metadata (``builder.info.metadata``) holds ``max_train_side`` (the longest
side of any training image, pixels, for checking crop sizes) and ``mean`` and ``std``: grey
statistics of the *train* split on the 0..255 scale, computed as BasicIRSTD does (mean of
per-image means, mean of per-image stds, float32). On the published files
(YimianDai/sirst, with the 50_50 lists of the DNA-Net repository) the ``50_50`` train split
gives mean 110.679 / std 29.351 (``acm`` train: mean 114.299 / std 28.044); BasicIRSTD's
published constants for NUAA-SIRST are mean 101.06385 / std 34.61961 (XinyiYing/BasicIRSTD,
utils.py, ``get_img_norm_cfg``), which the input pipeline uses with
``normalization='basicirstd'``.

Raw data lookup: ``download_config.manual_dir`` (holding ``images/``), then
``$IRST_DATA_DIR/NUAA-SIRST``, then ``../shared/datasets/NUAA-SIRST`` relative to the
repository root and to the working directory; otherwise the files are downloaded from
GitHub (YimianDai/sirst: ``images.zip``, ``masks.zip``, ``idx_427/*.txt``; only the
``acm`` config can be built from the download, as the 50_50 lists are not published
there; the download is abandoned after ``sources.download_timeout()`` seconds, 30 by
default). If all fails, :class:`~irst_jax.data.sources.DatasetNotFoundError` is raised.
"""

from __future__ import annotations

import os
import pathlib

import tensorflow_datasets as tfds

from irst_jax.data import sources
from irst_jax.data.builders import base

FOLDER = "NUAA-SIRST"

_GITHUB_RAW = "https://raw.githubusercontent.com/YimianDai/sirst/master"
_DOWNLOAD_URLS = {
    "images": f"{_GITHUB_RAW}/images.zip",
    "masks": f"{_GITHUB_RAW}/masks.zip",
    "idx_427_train": f"{_GITHUB_RAW}/idx_427/train.txt",
    "idx_427_val": f"{_GITHUB_RAW}/idx_427/val.txt",
    "idx_427_test": f"{_GITHUB_RAW}/idx_427/test.txt",
}

_LAYOUT = f"""\
Expected layout (the official one), e.g. under $IRST_DATA_DIR/{FOLDER}/ or the TFDS manual dir:
  images/Misc_<N>.png            427 images (modes L, RGB, RGBA or P)
  masks/Misc_<N>_pixels0.png     binary masks ({{0, 255}})
  idx_427/{{train,val,test}}.txt   split lists of config 'acm' (256/85/86)
  50_50/{{train,test}}.txt         split lists of config '50_50' (213/214)
The data is public at https://github.com/YimianDai/sirst (images.zip, masks.zip, idx_427/);
the 50_50 lists come with the DNA-Net / BasicIRSTD copies of the dataset."""

# Split name -> split file (relative to the dataset folder), per config.
_SPLIT_FILES = {
    "50_50": {"train": "50_50/train.txt", "test": "50_50/test.txt"},
    "acm": {
        "train": "idx_427/train.txt",
        "val": "idx_427/val.txt",
        "test": "idx_427/test.txt",
    },
}


# Known defect of the published data: the mask of Misc_111 (592 x 400) was annotated on a
# larger copy of the image (325 x 220, same aspect ratio; see masks/Misc_111.xml, whose
# <size> is 592 x 400). Its mask is resized to the image's size (nearest-neighbour), as the
# reference code effectively does by resizing image and mask separately. Any other size
# mismatch is an error.
KNOWN_MASK_SIZE_MISMATCHES = frozenset({"Misc_111"})


def image_path(root: pathlib.Path, name: str) -> pathlib.Path:
  return root / "images" / f"{name}.png"


def mask_path(root: pathlib.Path, name: str) -> pathlib.Path:
  return root / "masks" / f"{name}_pixels0.png"


class NuaaSirst(base.IrstdBuilder):
  """NUAA-SIRST: 427 real infrared images with small-target masks.

  Features: ``image`` uint8 (H, W, 1) grey, ``mask`` uint8 (H, W, 1) in {0, 1},
  ``name`` text (e.g. "Misc_12"). Configs: ``50_50`` (train 213 / test 214) and
  ``acm`` (train 256 / val 85 / test 86). ``info.metadata['mean'|'std']``: grey
  statistics of the train split (0..255 scale). See the module docstring.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: grey images, {0,1} masks, ACM and 50_50 splits."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name="50_50", description="DNA-Net / BasicIRSTD protocol: train 213, test 214."
      ),
      tfds.core.BuilderConfig(
          name="acm", description="ACM protocol (idx_427): train 256, val 85, test 86."
      ),
  ]
  DEFAULT_CONFIG_NAME = "50_50"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT

  FOLDER = FOLDER
  TITLE = "NUAA-SIRST"
  LAYOUT_HINT = "images/"
  DESCRIPTION = (
      "NUAA-SIRST (SIRST v1) single-frame infrared small target dataset: grey images "
      "with pixel-level target masks."
  )
  HOMEPAGE = "https://github.com/YimianDai/sirst"
  CITATION = (
      "@inproceedings{dai21acm, title={Asymmetric Contextual Modulation for Infrared "
      "Small Target Detection}, author={Dai, Yimian and Wu, Yiquan and Zhou, Fei and "
      "Barnard, Kobus}, booktitle={WACV}, year={2021}}"
  )

  #: Whether to try downloading from GitHub when no local copy is found (tests turn it off).
  ALLOW_DOWNLOAD = True

  @classmethod
  def _has_layout(cls, d: pathlib.Path) -> bool:
    return (d / "images").is_dir()

  def _split_examples(self, root: pathlib.Path):
    return {
        split: base.specs_from_split_file(
            root / rel,
            lambda n: image_path(root, n),
            lambda n: mask_path(root, n),
            resize_mask_to_image=KNOWN_MASK_SIZE_MISMATCHES,
        )
        for split, rel in _SPLIT_FILES[self.builder_config.name].items()
    }

  def _remote_source(self, dl_manager):
    if not self.ALLOW_DOWNLOAD:
      return None, f"and GitHub ({_GITHUB_RAW}): download disabled."
    try:
      return sources.call_with_timeout(lambda: self._download_source(dl_manager),
                                       sources.download_timeout(), "the download"), ""
    except Exception as e:  # Network errors come in many types.
      return None, f"and GitHub ({_GITHUB_RAW}): download failed: {type(e).__name__}: {e}."

  def _download_source(self, dl_manager) -> pathlib.Path:
    """Downloads the GitHub copy; returns a directory in the official layout."""
    if self.builder_config.name != "acm":
      raise RuntimeError(
          "the GitHub repository YimianDai/sirst ships only the idx_427 ('acm') split "
          f"lists, not those of config '{self.builder_config.name}'"
      )
    paths = dl_manager.download_and_extract(_DOWNLOAD_URLS)
    root = pathlib.Path(os.fspath(dl_manager.download_dir)) / "nuaa_sirst_layout"
    (root / "idx_427").mkdir(parents=True, exist_ok=True)
    for sub in ("images", "masks"):
      extracted = pathlib.Path(os.fspath(paths[sub]))
      # The archive may hold the files directly or inside an `images/` folder.
      inner = extracted / sub
      target = inner if inner.is_dir() else extracted
      link = root / sub
      if link.is_symlink() or link.exists():
        link.unlink()
      link.symlink_to(target, target_is_directory=True)
    for split in ("train", "val", "test"):
      src = pathlib.Path(os.fspath(paths[f"idx_427_{split}"]))
      (root / "idx_427" / f"{split}.txt").write_bytes(src.read_bytes())
    return root
