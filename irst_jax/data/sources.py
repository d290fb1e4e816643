"""Shared helpers for the dataset builders: locating raw data, reading images and split lists.

These helpers hold no dataset-specific knowledge; each builder (``nuaa_sirst``,
``nudt_sirst``, ``mdvsfa_cgan``, all built on :mod:`irst_jax.data.builders.base`) passes its
own folder name, layout check and file names.

Source lookup order (see :func:`find_source_dir`):

1. the TFDS download config's manual dir (``dl_manager.manual_dir``), when it exists and
   has the expected layout;
2. ``$IRST_DATA_DIR/<folder>``;
3. ``../shared/datasets/<folder>`` relative to the repository root (the directory that
   holds the ``irst_jax`` package), then the same path relative to the current working
   directory.

A manual dir that is given but does not exist, or holds no copy of the dataset, is an error
naming it (:meth:`irst_jax.data.builders.base.IrstdBuilder._source_dir`), not skipped.

If none matches, a builder may try to download the data (only ``nuaa_sirst`` can), giving up
after :func:`download_timeout` seconds (30 by default, ``$IRST_JAX_DOWNLOAD_TIMEOUT_S``);
when that also fails it raises :class:`DatasetNotFoundError`, whose message lists every
directory searched.
"""

from __future__ import annotations

import inspect
import os
import pathlib
import threading
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

PathLike = str | os.PathLike

#: Environment variable naming a directory that holds the raw datasets in their official
#: layouts (e.g. ``$IRST_DATA_DIR/NUAA-SIRST/images``).
DATA_DIR_ENV = "IRST_DATA_DIR"

#: Repository root: the parent of the directory of the ``irst_jax`` package.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

#: Seconds a builder waits for a download before it gives up and says where to put the files
#: (offline, TFDS's downloader retries for minutes); ``$IRST_JAX_DOWNLOAD_TIMEOUT_S`` overrides.
DOWNLOAD_TIMEOUT_S = 30.0
DOWNLOAD_TIMEOUT_ENV = "IRST_JAX_DOWNLOAD_TIMEOUT_S"

_T = TypeVar("_T")


class CodePathMixin:
  """Mix into a TFDS builder defined in this package (before the TFDS base class).

  tfds 4.9.10's ``DatasetBuilder.code_path`` touches ``importlib_resources`` (a package
  that is not installed here) for builders defined in a regular package; this returns
  the builder's source file directly, which is what that code computes anyway.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path | None:
    try:
      return epath.Path(inspect.getfile(cls))
    except (TypeError, OSError):
      return None


class DatasetNotFoundError(FileNotFoundError):
  """The raw files of a dataset were found in none of the searched places."""


class InvalidSourceError(ValueError):
  """A raw file of a dataset is missing, unreadable or inconsistent with its pair."""


def download_timeout() -> float:
  """The download time limit in seconds: ``$IRST_JAX_DOWNLOAD_TIMEOUT_S`` or
  :data:`DOWNLOAD_TIMEOUT_S`. Raises ValueError naming the variable for a non-positive or
  non-numeric value."""
  value = os.environ.get(DOWNLOAD_TIMEOUT_ENV)
  if value is None:
    return float(DOWNLOAD_TIMEOUT_S)
  try:
    seconds = float(value)
  except ValueError:
    seconds = float("nan")
  if not seconds > 0:
    raise ValueError(f"{DOWNLOAD_TIMEOUT_ENV}={value!r}: expected a positive number of seconds")
  return seconds


def call_with_timeout(fn: Callable[[], _T], timeout_s: float, what: str) -> _T:
  """``fn()``, run in a daemon thread and abandoned after `timeout_s` seconds.

  For calls that cannot be given a timeout of their own (TFDS's download manager). An
  abandoned call keeps running in the background until it ends or the process exits.

  Raises:
    TimeoutError: `fn` did not return within `timeout_s` (the message names `what`).
    Whatever `fn` raised, re-raised in the caller's thread.
  """
  outcome: dict[str, object] = {}

  def target():
    try:
      outcome["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in the caller
      outcome["error"] = e

  thread = threading.Thread(target=target, name=f"irst_jax {what}", daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise TimeoutError(f"{what} did not finish within {timeout_s:g} s (offline? set "
                       f"{DOWNLOAD_TIMEOUT_ENV} to wait longer)")
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


def candidate_dirs(folder: str, manual_dir: PathLike | None = None) -> list[pathlib.Path]:
  """Returns the directories searched for the raw dataset ``folder``, in order.

  Args:
    folder: the dataset's folder name in the official layout, e.g. ``"NUAA-SIRST"``.
    manual_dir: the TFDS manual dir, searched first (as given, not joined with
      ``folder``; also ``manual_dir/folder`` is tried).
  """
  dirs: list[pathlib.Path] = []
  if manual_dir is not None:
    manual = pathlib.Path(os.fspath(manual_dir)).expanduser()
    dirs += [manual, manual / folder]
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    dirs.append(pathlib.Path(env).expanduser() / folder)
  dirs.append(REPO_ROOT.parent / "shared" / "datasets" / folder)
  dirs.append(pathlib.Path.cwd().parent / "shared" / "datasets" / folder)
  unique: list[pathlib.Path] = []
  for d in dirs:
    if d not in unique:
      unique.append(d)
  return unique


def find_source_dir(
    folder: str,
    is_valid: Callable[[pathlib.Path], bool],
    manual_dir: PathLike | None = None,
) -> tuple[pathlib.Path | None, list[pathlib.Path]]:
  """Returns ``(first candidate dir for which is_valid(dir) holds or None, dirs searched)``."""
  searched = candidate_dirs(folder, manual_dir)
  for d in searched:
    try:
      if d.is_dir() and is_valid(d):
        return d, searched
    except OSError:
      continue
  return None, searched


def read_split_file(path: PathLike) -> list[str]:
  """Reads a split list: one name a line, no extension; a missing trailing newline is fine.

  Blank lines and surrounding whitespace are dropped; order and duplicates are kept, so
  the list stays exactly the published one.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise InvalidSourceError(f"Split file {path} does not exist.")
  text = path.read_text(encoding="utf-8")
  return [line.strip() for line in text.splitlines() if line.strip()]


def _open_image(path: pathlib.Path, what: str) -> Image.Image:
  if not path.is_file():
    raise InvalidSourceError(f"Missing {what} file {path} (expected a PNG image).")
  try:
    img = Image.open(path)
    img.load()
  except Exception as e:  # PIL raises several kinds (OSError, SyntaxError, ...).
    raise InvalidSourceError(
        f"Cannot read {what} file {path}: expected a readable PNG image ({e})."
    ) from e
  return img


def read_grey(path: PathLike) -> np.ndarray:
  """Reads an image as grey uint8 [H, W, 1] with PIL ``convert('L')`` (any source mode)."""
  img = _open_image(pathlib.Path(path), "image")
  return np.asarray(img.convert("L"), dtype=np.uint8)[..., None]


def read_mask(path: PathLike) -> np.ndarray:
  """Reads a binary mask as uint8 [H, W, 1] in {0, 1}: pixels > 0 (after convert('L')) are 1.

  Accepted: background 0 and at most one target value ({0, 255}, {0, 1}, mode "1", ...).
  Raises InvalidSourceError naming the file for any other mask (grey levels, e.g. a
  soft or resampled mask), since binarising it would silently change the targets. Every mask
  of the three published datasets passes.
  """
  img = _open_image(pathlib.Path(path), "mask")
  arr = np.asarray(img.convert("L"))
  values = np.flatnonzero(np.bincount(arr.ravel(), minlength=256))   # sorted, distinct
  if len(values) > 2 or (len(values) == 2 and values[0] != 0) or (len(values) == 1 and values[0]
                                                                    not in (0, 255, 1)):
    raise InvalidSourceError(
        f"Mask {path} is not binary: it holds the values {values[:6].tolist()}"
        f"{'...' if len(values) > 6 else ''}; expected background 0 and one target value "
        "(e.g. {0, 255}).")
  return (arr > 0).astype(np.uint8)[..., None]


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """Nearest-neighbour resize of a {0, 1} uint8 [h, w, 1] mask to [height, width, 1]."""
  img = Image.fromarray(mask[..., 0] * np.uint8(255))
  img = img.resize((width, height), Image.NEAREST)
  return (np.asarray(img) > 0).astype(np.uint8)[..., None]


def read_pair(
    image_path: PathLike, mask_path: PathLike, resize_mask_to_image: bool = False
) -> tuple[np.ndarray, np.ndarray]:
  """Reads an (image, mask) pair and checks that both have the same H x W.

  Args:
    image_path: the image file.
    mask_path: the mask file.
    resize_mask_to_image: for known defects of a published dataset only (a mask
      annotated on a larger copy of the image): resize the mask to the image's size with
      nearest-neighbour instead of raising.
  """
  image = read_grey(image_path)
  mask = read_mask(mask_path)
  if resize_mask_to_image and image.shape[:2] != mask.shape[:2]:
    mask = resize_mask(mask, image.shape[0], image.shape[1])
  if image.shape[:2] != mask.shape[:2]:
    raise InvalidSourceError(
        f"Mask {mask_path} has size H x W = {mask.shape[0]} x {mask.shape[1]}, expected "
        f"{image.shape[0]} x {image.shape[1]}, the size of image {image_path}."
    )
  return image, mask


def grey_mean_std(images: Iterable[np.ndarray]) -> tuple[float, float]:
  """Mean of per-image means and mean of per-image stds (float32, 0..255 scale).

  This is how BasicIRSTD computes its per-dataset normalisation constants.
  """
  means, stds = [], []
  for img in images:
    x = np.asarray(img, dtype=np.float32)
    means.append(float(x.mean()))
    stds.append(float(x.std()))
  if not means:
    raise ValueError("Cannot compute mean/std over an empty list of images.")
  return float(np.mean(means)), float(np.mean(stds))


def format_searched(dirs: Sequence[pathlib.Path]) -> str:
  return "\n".join(f"  - {d}" for d in dirs)
