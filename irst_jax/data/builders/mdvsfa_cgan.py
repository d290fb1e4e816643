"""TFDS builder for MDvsFA-cGAN (a.k.a. NUST-SIRST; Wang, Zhou and Wang, "Miss Detection
vs. False Alarm: Adversarial Learning for Small Object Segmentation in Infrared Images",
ICCV 2019; data from the authors' repository, wanghuanphd/MDvsFA_cGAN).

Examples (features common to all IRSTD builders, see :mod:`irst_jax.data.builders.base`):

* ``image``: uint8 (H, W, 1), grey (PIL ``convert('L')``; the PNGs are RGB);
* ``mask``: uint8 (H, W, 1) in {0, 1} (mask > 0; training masks are {0, 255} L, test masks
  1-bit mode "1");
* ``name``: text, the file's id: six digits for training pairs (``"000123"``), five for
  test images (``"00042"``).

Config ``official`` (the folders are the split; there are no split files) and its splits:

* ``train``: the 9,978 complete pairs ``training/<NNNNNN>_1.png`` (image) +
  ``training/<NNNNNN>_2.png`` (mask), 128 x 128. The ids run over 000000..009999, but 22 of
  them are absent entirely (neither file exists) in the published data; found by scanning
  the folder, they are 000239, 000245, 000260, 000264, 002543, 002553, 002561, 002808,
  002817, 002819, 003503, 003504, 003947, 003949, 003962, 007389, 007395, 008094, 008105,
  008112, 008757, 008772 (:data:`ABSENT_TRAINING_IDS`). The builder scans the folder, so
  these are simply not there; ``info.metadata['absent_training_ids']`` lists the ids
  missing from 0..(largest id) in the copy that was built.
* ``test``: the 100 images ``test_org/<NNNNN>.png`` (sizes vary, from 96 x 101 to
  295 x 442, 26 of them 128 x 128) with masks ``test_gt/<NNNNN>.png``.
* ``train_half`` / ``val_half``: the DAEA protocol (Sci. Rep. 2023, "Implementation details":
  "we do equal division of the training set, half for training and half for validation";
  the paper does not say how). Choice made here: the training ids sorted ascending, the
  first half (``ceil(n / 2)``) is ``train_half`` and the rest ``val_half``: 4,989 / 4,989
  on the published data (000000..004998 / 004999..009999 minus absent ids). Contiguous
  halves rather than even/odd positions, because neighbouring ids are often near-identical
  frames (e.g. 000100 and 000101 differ by 1.2 grey levels on average), which an
  interleaved split would leak between training and validation. These two splits repeat
  the examples of ``train``.

Validation while building: in ``training/`` an image without its mask (or a mask without
its image) is an error naming the missing file; likewise for ``test_org/`` vs
``test_gt/``. Every pair must have equal H x W and a binary mask; unreadable files raise
:class:`~irst_jax.data.sources.InvalidSourceError` naming the file. Files not named like the
official ones (e.g. ``Thumbs.db``) are ignored.

``info.metadata``: ``mean`` / ``std`` (grey statistics of the ``train`` split, 0..255 scale,
mean of per-image means / stds as BasicIRSTD computes them), ``max_train_side`` (128),
``source``, ``absent_training_ids``. On the authors' published files
``train`` gives mean 104.568 / std 26.852. Building takes 30-45 s on one CPU core.

Raw data lookup: ``download_config.manual_dir`` (or ``manual_dir/MDvsFA-cGAN``), then
``$IRST_DATA_DIR/MDvsFA-cGAN``, then ``../shared/datasets/MDvsFA-cGAN`` relative to the
repository root and to the working directory. There is no download: the authors
distribute the data through cloud-drive links from their repository
(https://github.com/wanghuanphd/MDvsFA_cGAN); without a local copy
:class:`~irst_jax.data.sources.DatasetNotFoundError` says so and where to put it.
"""

from __future__ import annotations

import pathlib
import re

import tensorflow_datasets as tfds

from irst_jax.data import sources
from irst_jax.data.builders import base

FOLDER = "MDvsFA-cGAN"
AUTHORS_REPOSITORY = "https://github.com/wanghuanphd/MDvsFA_cGAN"

#: Ids of 000000..009999 with neither training file in the published data (scanned).
ABSENT_TRAINING_IDS = (
    "000239", "000245", "000260", "000264", "002543", "002553", "002561", "002808",
    "002817", "002819", "003503", "003504", "003947", "003949", "003962", "007389",
    "007395", "008094", "008105", "008112", "008757", "008772",
)

_TRAIN_FILE = re.compile(r"(\d{6})_([12])\.png")
_TEST_FILE = re.compile(r"(\d{5})\.png")

_LAYOUT = f"""\
MDvsFA-cGAN is distributed through cloud-drive links published in the authors' repository
{AUTHORS_REPOSITORY} (no automatic download). Unpack it so that one of the searched
folders (e.g. $IRST_DATA_DIR/{FOLDER}/, ../shared/datasets/{FOLDER}/ or the TFDS manual dir,
--config.dataset.manual_dir) holds the official layout:
  training/<NNNNNN>_1.png   training images, 128 x 128 (9,978 pairs)
  training/<NNNNNN>_2.png   their masks ({{0, 255}})
  test_org/<NNNNN>.png      100 test images, sizes vary
  test_gt/<NNNNN>.png       their masks (1-bit)"""


def _scan(folder: pathlib.Path, pattern: re.Pattern) -> list[re.Match]:
  if not folder.is_dir():
    raise sources.InvalidSourceError(f"Missing folder {folder}.")
  matches = (pattern.fullmatch(p.name) for p in folder.iterdir())
  return [m for m in matches if m is not None]


def training_specs(root: pathlib.Path) -> tuple[list[base.PairSpec], list[str]]:
  """(pairs of ``training/`` sorted by id, absent ids of 0..largest id).

  Raises InvalidSourceError naming the missing partner of an unpaired file.
  """
  d = root / "training"
  files: dict[str, set[str]] = {}
  for m in _scan(d, _TRAIN_FILE):
    files.setdefault(m.group(1), set()).add(m.group(2))
  for i, kinds in sorted(files.items()):
    if kinds != {"1", "2"}:
      have, missing = ("1", "2") if "1" in kinds else ("2", "1")
      what = {"1": "image", "2": "mask"}
      raise sources.InvalidSourceError(
          f"Training {what[have]} {d / f'{i}_{have}.png'} has no {what[missing]}: "
          f"{d / f'{i}_{missing}.png'} is missing.")
  ids = sorted(files)
  absent = []
  if ids:
    present = set(ids)
    absent = [f"{k:06d}" for k in range(int(ids[-1]) + 1) if f"{k:06d}" not in present]
  specs = [base.PairSpec(i, d / f"{i}_1.png", d / f"{i}_2.png") for i in ids]
  return specs, absent


def test_specs(root: pathlib.Path) -> list[base.PairSpec]:
  """Pairs of ``test_org/`` and ``test_gt/`` sorted by name; unpaired files are errors."""
  org, gt = root / "test_org", root / "test_gt"
  images = {m.group(1) for m in _scan(org, _TEST_FILE)}
  masks = {m.group(1) for m in _scan(gt, _TEST_FILE)}
  for name in sorted(images ^ masks):
    if name in images:
      raise sources.InvalidSourceError(
          f"Test image {org / f'{name}.png'} has no mask: {gt / f'{name}.png'} is missing.")
    raise sources.InvalidSourceError(
        f"Test mask {gt / f'{name}.png'} has no image: {org / f'{name}.png'} is missing.")
  return [base.PairSpec(n, org / f"{n}.png", gt / f"{n}.png") for n in sorted(images)]


def halves(specs: list[base.PairSpec]) -> tuple[list[base.PairSpec], list[base.PairSpec]]:
  """DAEA halves: (first ceil(n/2), remaining) of the pairs sorted by id."""
  specs = sorted(specs, key=lambda s: s.name)
  k = (len(specs) + 1) // 2
  return specs[:k], specs[k:]


class MdvsfaCgan(base.IrstdBuilder):
  """MDvsFA-cGAN: 9,978 training pairs (128 x 128) and 100 test images of varying size.

  Features: ``image`` uint8 (H, W, 1) grey, ``mask`` uint8 (H, W, 1) in {0, 1}, ``name``
  text (e.g. "000123", test "00042"). Config ``official``: splits ``train`` 9,978,
  ``test`` 100, ``train_half`` 4,989 and ``val_half`` 4,989 (DAEA protocol: first / second
  half of the sorted training ids). ``info.metadata['mean'|'std']``: grey statistics of
  ``train`` (0..255 scale). See the module docstring.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: grey images, {0,1} masks, train/test + halves."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name="official",
          description=(
              "Official folders: train 9,978 (training/), test 100 (test_org/, test_gt/); "
              "plus DAEA's train_half / val_half (first / second half of sorted ids)."
          ),
      ),
  ]
  DEFAULT_CONFIG_NAME = "official"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT

  FOLDER = FOLDER
  TITLE = "MDvsFA-cGAN"
  LAYOUT_HINT = "training/, test_org/ and test_gt/"
  DESCRIPTION = (
      "MDvsFA-cGAN (NUST-SIRST) infrared small target dataset (Wang et al., ICCV 2019): "
      "128 x 128 training pairs and 100 test images of varying size, grey, with masks."
  )
  HOMEPAGE = AUTHORS_REPOSITORY
  CITATION = (
      "@inproceedings{wang2019miss, title={Miss Detection vs. False Alarm: Adversarial "
      "Learning for Small Object Segmentation in Infrared Images}, author={Wang, Huan and "
      "Zhou, Luping and Wang, Lei}, booktitle={ICCV}, year={2019}}"
  )

  @classmethod
  def _has_layout(cls, d: pathlib.Path) -> bool:
    return (d / "training").is_dir()

  def _split_examples(self, root: pathlib.Path):
    train, self._absent = training_specs(root)
    train_half, val_half = halves(train)
    return {
        "train": train,
        "test": test_specs(root),
        "train_half": train_half,
        "val_half": val_half,
    }

  def _extra_metadata(self, root, splits):
    del root, splits
    self.info.metadata["absent_training_ids"] = list(self._absent)
