"""Shared base of the IRSTD TFDS builders (NUAA-SIRST, NUDT-SIRST, MDvsFA-cGAN).

Every builder writes the same features (all ``tfds.features.Tensor``, so no TensorFlow is
needed; prepare with ``file_format='array_record'`` and read with
``builder.as_data_source()``):

* ``image``: uint8 (H, W, 1), grey (PIL ``convert('L')`` of the source image, any mode);
* ``mask``: uint8 (H, W, 1) with values in {0, 1} (source mask > 0; validated binary by
  :func:`irst_jax.data.sources.read_mask`);
* ``name``: text, the file stem (read back as ``bytes``);

and the same ``info.metadata``:

* ``mean``, ``std``: grey statistics of the ``train`` split on the 0..255 scale, computed
  as BasicIRSTD does (mean of per-image means, mean of per-image stds, float32);
* ``max_train_side``: the longest side of any ``train`` image, pixels;
* ``source``: the raw-data directory the dataset was built from.

A subclass describes where its raw data lives (:attr:`IrstdBuilder.FOLDER`,
:meth:`IrstdBuilder._has_layout`) and which files make each split
(:meth:`IrstdBuilder._split_examples`); this base finds the source directory
(:func:`irst_jax.data.sources.find_source_dir`), reads and validates every pair before
writing anything (so that a bad file fails the build with its name and no partial
dataset), computes the metadata and generates the examples.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import os
import pathlib
from typing import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from irst_jax.data import sources


@dataclasses.dataclass(frozen=True)
class PairSpec:
  """One example to build: its name and the files of its image and mask.

  ``resize_mask_to_image`` is for documented defects of a published dataset only (a mask
  annotated on a larger copy of its image); see :func:`irst_jax.data.sources.read_pair`.
  """

  name: str
  image_path: pathlib.Path
  mask_path: pathlib.Path
  resize_mask_to_image: bool = False

  def read(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image uint8 (H, W, 1) grey, mask uint8 (H, W, 1) in {0, 1})."""
    return sources.read_pair(
        self.image_path, self.mask_path, resize_mask_to_image=self.resize_mask_to_image
    )


def specs_from_split_file(
    split_file: pathlib.Path,
    image_path,
    mask_path,
    resize_mask_to_image: frozenset[str] = frozenset(),
) -> list[PairSpec]:
  """PairSpecs of the names listed in ``split_file``, in order.

  Args:
    split_file: a published split list (one name a line, no extension).
    image_path: ``name -> Path`` of the image.
    mask_path: ``name -> Path`` of the mask.
    resize_mask_to_image: names whose mask is resized to the image (known defects).

  Raises:
    InvalidSourceError: the split file is missing, empty, or lists a name twice.
  """
  names = sources.read_split_file(split_file)
  if not names:
    raise sources.InvalidSourceError(
        f"Split file {split_file} is empty; expected one image name a line (no extension).")
  dup = [n for n, c in collections.Counter(names).items() if c > 1]
  if dup:
    raise sources.InvalidSourceError(
        f"Split file {split_file} lists {len(dup)} name(s) more than once: {dup[:5]}; "
        f"a split's examples must be distinct.")
  return [
      PairSpec(n, image_path(n), mask_path(n), n in resize_mask_to_image) for n in names
  ]


def tensor_features() -> tfds.features.FeaturesDict:
  """``image`` / ``mask``: uint8 (H, W, 1) zlib-encoded Tensors; ``name``: Text."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(None, None, 1), dtype=np.uint8, encoding="zlib"),
      "mask": tfds.features.Tensor(shape=(None, None, 1), dtype=np.uint8, encoding="zlib"),
      "name": tfds.features.Text(),
  })


class IrstdBuilder(
    sources.CodePathMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """Base TFDS builder of an IRSTD dataset in its official layout (see module docstring).

  Subclasses set ``FOLDER``, ``TITLE``, ``DESCRIPTION``, ``HOMEPAGE``, ``CITATION``,
  ``LAYOUT_HINT`` (what a valid source folder holds, for the not-found message),
  ``MANUAL_DOWNLOAD_INSTRUCTIONS`` and implement :meth:`_has_layout` and
  :meth:`_split_examples`; they may override :meth:`_remote_source` (e.g. a download).
  """

  FOLDER: str = ""
  TITLE: str = ""
  DESCRIPTION: str = ""
  HOMEPAGE: str = ""
  CITATION: str = ""
  LAYOUT_HINT: str = "images/"

  # -- to implement ----------------------------------------------------------------------

  @classmethod
  @abc.abstractmethod
  def _has_layout(cls, d: pathlib.Path) -> bool:
    """Whether ``d`` looks like the dataset's folder in its official layout."""

  @abc.abstractmethod
  def _split_examples(self, root: pathlib.Path) -> Mapping[str, Sequence[PairSpec]]:
    """Split name -> the examples of that split, for the current builder config.

    Raises InvalidSourceError naming the file for a missing/inconsistent source file that
    can be detected from the listing alone.
    """

  def _remote_source(self, dl_manager) -> tuple[pathlib.Path | None, str]:
    """Fallback when no local copy exists: (folder or None, note for the error message)."""
    del dl_manager
    return None, "No download: the data is distributed by its authors (see below)."

  # -- TFDS ------------------------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tensor_features(),
        supervised_keys=("image", "mask"),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _local_source(self, dl_manager) -> tuple[pathlib.Path | None, list[pathlib.Path]]:
    try:
      manual = dl_manager.manual_dir  # Raises when not set, absent or empty.
    except (AssertionError, ValueError):
      manual = getattr(dl_manager, "_manual_dir", None)  # Still listed as searched.
    return sources.find_source_dir(self.FOLDER, self._has_layout, manual_dir=manual)

  def _check_manual_dir(self, dl_manager) -> None:
    """Raises DatasetNotFoundError naming the manual dir when one is given but does not
    exist or holds no copy of the dataset (it is not silently skipped)."""
    manual = getattr(dl_manager, "_manual_dir", None)
    download_dir = getattr(dl_manager, "download_dir", None)
    if manual is None or (download_dir is not None and os.fspath(manual) == os.fspath(
        pathlib.Path(os.fspath(download_dir)) / "manual")):
      return   # none given: TFDS's default <data_dir>/downloads/manual, searched if present
    path = pathlib.Path(os.fspath(manual)).expanduser()
    if not path.is_dir():
      raise sources.DatasetNotFoundError(
          f"manual_dir {path} does not exist; expected the {self.TITLE} folder (holding "
          f"{self.LAYOUT_HINT}) or a folder holding {self.FOLDER}/")
    if not (self._has_layout(path) or self._has_layout(path / self.FOLDER)):
      raise sources.DatasetNotFoundError(
          f"manual_dir {path} holds no {self.TITLE} data: expected {self.LAYOUT_HINT} in "
          f"{path} or in {path / self.FOLDER}\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")

  def _source_dir(self, dl_manager) -> pathlib.Path:
    self._check_manual_dir(dl_manager)
    root, searched = self._local_source(dl_manager)
    if root is not None:
      return root
    root, note = self._remote_source(dl_manager)
    if root is not None:
      return root
    raise sources.DatasetNotFoundError(
        f"{self.TITLE} raw data not found. Searched (in order), for a folder holding "
        f"{self.LAYOUT_HINT}:\n{sources.format_searched(searched)}\n{note}\n"
        f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )

  def _split_generators(self, dl_manager):
    root = self._source_dir(dl_manager)
    splits = {k: list(v) for k, v in self._split_examples(root).items()}
    # Read and check every pair up front (clear errors before any writing), computing the
    # train statistics on the way. Each pair is decoded once and kept for the writing,
    # also when several splits share it (MDvsFA-cGAN's halves): the three datasets hold
    # 0.2-0.4 GB decoded, and reading them again took half of a build (MDvsFA-cGAN:
    # 117 -> 59 s).
    if not splits.get("train"):
      raise sources.InvalidSourceError(f"{self.TITLE} source {root}: the train split is empty.")
    decoded: dict[PairSpec, tuple[np.ndarray, np.ndarray]] = {}

    def read(spec: PairSpec) -> tuple[np.ndarray, np.ndarray]:
      key = dataclasses.replace(spec, name="")
      if key not in decoded:
        decoded[key] = spec.read()
      return decoded[key]

    mean, std = sources.grey_mean_std(read(spec)[0] for spec in splits["train"])
    for specs in splits.values():
      for spec in specs:
        read(spec)
    max_side = max(max(read(spec)[0].shape[:2]) for spec in splits["train"])
    self.info.metadata["mean"] = mean
    self.info.metadata["std"] = std
    self.info.metadata["max_train_side"] = int(max_side)
    self.info.metadata["source"] = str(root)
    self._extra_metadata(root, splits)
    return {split: self._generate_examples(specs, read) for split, specs in splits.items()}

  def _extra_metadata(self, root: pathlib.Path, splits: Mapping[str, Sequence[PairSpec]]):
    """Hook to store more metadata once the sources are validated."""
    del root, splits

  def _generate_examples(self, specs: Sequence[PairSpec], read) -> Iterator:
    """Yields (name, example) for `specs`; `read(spec)` gives its (image, mask)."""
    for spec in specs:
      image, mask = read(spec)
      yield spec.name, {"image": image, "mask": mask, "name": spec.name}
