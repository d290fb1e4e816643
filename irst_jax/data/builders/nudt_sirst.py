"""TFDS builder for NUDT-SIRST (Li et al., "Dense Nested Attention Network for Infrared
Small Target Detection", IEEE TIP 2022, the DNA-Net paper; data from its repository,
YeRen123455/Infrared-Small-Target-Detection).

1,327 synthesised infrared images of 256 x 256 pixels, stored as RGB PNGs with grey
content. Examples (features common to all IRSTD builders, see
:mod:`irst_jax.data.builders.base`):

* ``image``: uint8 (256, 256, 1), grey (PIL ``convert('L')`` of ``images/<name>.png``);
* ``mask``: uint8 (256, 256, 1) in {0, 1} (``masks/<name>.png`` > 0, published as {0, 255});
* ``name``: text, the six-digit file stem, e.g. ``"000001"``.

Config and splits (the published lists, kept exactly):

* ``50_50`` (DNA-Net / BasicIRSTD protocol, ``50_50/{train,test}.txt``): train 663,
  test 664.

Every listed name must have both files, of equal H x W, with a binary mask, and a list
may not repeat a name; otherwise the build fails with
:class:`~irst_jax.data.sources.InvalidSourceError` naming the file. Split sizes are those
of the lists.

``info.metadata``: ``mean`` / ``std`` (grey statistics of the train split, 0..255 scale,
mean of per-image means / stds as BasicIRSTD computes them), ``max_train_side`` (256),
``source``. On the published files the 50_50 train split
gives mean 108.023 / std 33.214. BasicIRSTD's published constants, 107.80905 / 33.02275
(``normalization='basicirstd'``), are the same statistic over all 1,327 images (train and
test), which this copy reproduces to the fifth decimal.

Raw data lookup: ``download_config.manual_dir`` (or ``manual_dir/NUDT-SIRST``), then
``$IRST_DATA_DIR/NUDT-SIRST``, then ``../shared/datasets/NUDT-SIRST`` relative to the
repository root and to the working directory. There is no download: the authors
distribute the dataset through cloud-drive links from the DNA-Net repository
(https://github.com/YeRen123455/Infrared-Small-Target-Detection); without a local copy
:class:`~irst_jax.data.sources.DatasetNotFoundError` says so and where to put it.
"""

from __future__ import annotations

import pathlib

import tensorflow_datasets as tfds

from irst_jax.data.builders import base

FOLDER = "NUDT-SIRST"
AUTHORS_REPOSITORY = "https://github.com/YeRen123455/Infrared-Small-Target-Detection"

_LAYOUT = f"""\
NUDT-SIRST is distributed through cloud-drive links published in the DNA-Net repository
{AUTHORS_REPOSITORY} (no automatic download). Unpack it so that one of the searched
folders (e.g. $IRST_DATA_DIR/{FOLDER}/, ../shared/datasets/{FOLDER}/ or the TFDS manual dir,
--config.dataset.manual_dir) holds the official layout:
  images/<NNNNNN>.png      1,327 images, 256 x 256 (stored RGB, grey content)
  masks/<NNNNNN>.png       binary masks ({{0, 255}})
  50_50/{{train,test}}.txt   split lists of config '50_50' (663/664)"""

_SPLIT_FILES = {"50_50": {"train": "50_50/train.txt", "test": "50_50/test.txt"}}


def image_path(root: pathlib.Path, name: str) -> pathlib.Path:
  return root / "images" / f"{name}.png"


def mask_path(root: pathlib.Path, name: str) -> pathlib.Path:
  return root / "masks" / f"{name}.png"


class NudtSirst(base.IrstdBuilder):
  """NUDT-SIRST: 1,327 synthesised 256 x 256 infrared images with small-target masks.

  Features: ``image`` uint8 (256, 256, 1) grey, ``mask`` uint8 (256, 256, 1) in {0, 1},
  ``name`` text (e.g. "000001"). Config ``50_50``: train 663 / test 664.
  ``info.metadata['mean'|'std']``: grey statistics of the train split (0..255 scale).
  See the module docstring.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: grey images, {0,1} masks, 50_50 split."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name="50_50", description="DNA-Net / BasicIRSTD protocol: train 663, test 664."
      ),
  ]
  DEFAULT_CONFIG_NAME = "50_50"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT

  FOLDER = FOLDER
  TITLE = "NUDT-SIRST"
  LAYOUT_HINT = "images/, masks/ and 50_50/"
  DESCRIPTION = (
      "NUDT-SIRST single-frame infrared small target dataset (DNA-Net paper): 1,327 "
      "synthesised 256 x 256 grey images with pixel-level target masks."
  )
  HOMEPAGE = AUTHORS_REPOSITORY
  CITATION = (
      "@article{li2022dense, title={Dense Nested Attention Network for Infrared Small "
      "Target Detection}, author={Li, Boyang and Xiao, Chao and Wang, Longguang and Wang, "
      "Yingqian and Lin, Zaiping and Li, Miao and An, Wei and Guo, Yulan}, "
      "journal={IEEE Transactions on Image Processing}, year={2022}}"
  )

  @classmethod
  def _has_layout(cls, d: pathlib.Path) -> bool:
    return (d / "images").is_dir() and (d / "masks").is_dir()

  def _split_examples(self, root: pathlib.Path):
    return {
        split: base.specs_from_split_file(
            root / rel, lambda n: image_path(root, n), lambda n: mask_path(root, n)
        )
        for split, rel in _SPLIT_FILES[self.builder_config.name].items()
    }
