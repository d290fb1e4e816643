"""Run a trained detector on images of any size: score map, binary mask and detections.

    detector = Detector.from_export("runs/acm_unet/export")    # only jax + numpy needed
    detector = export.workdir_detector("runs/acm_unet")        # in-framework (irst_jax.serving)
    result = detector(image)        # [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; any size
    result.score, result.mask, result.detections

This module imports nothing but the standard library, numpy and jax at import time, so that
an exported artifact (:mod:`irst_jax.serving.export`; a copy of this file is written into it
as ``irst_detector.py``) runs on a machine without irst_jax's training or model code. It
imports nothing of irst_jax: the in-framework detector of a workdir is built by
:func:`irst_jax.serving.export.workdir_detector` (Flax, the models), which imports this module.

The network function a Detector wraps is the one of :func:`irst_jax.serving.export.make_forward`:
grey images ``[B, H, W, 1]`` float32 on the 0..255 scale, each in the top-left ``(h, w)``
corner of the canvas given by ``sizes`` int32 ``[B, 2]``, in; it normalises them with the
training set's mean/std, sets the padding to 0 (after normalisation, as the evaluation pads),
zero-pads further bottom/right to the model's multiple of 32 (every model of irst_jax needs H
and W divisible by 32), runs the network, crops back to H x W and labels the 8-connected
components of ``(logits > logit(threshold)) & valid`` with
:func:`irst_jax.evaluation.components.connected_components`, as the evaluation does, so
detections are the components that Pd/Fa count and never include or connect through padding.

Every distinct input shape is one compilation of the network (seconds to tens of seconds on a
CPU), so :meth:`Detector.predict_batch` pads images of any sizes on the host to a canvas and
can complete the batch with dummy images to a fixed batch size; ``irst_jax.serving.predict``
plans at most four canvases for a whole folder (:mod:`irst_jax.data.canvas`). Scores of an
image are those of the network on the canvas it was padded to: networks with global pooling
(ACM's global attention) give slightly different scores on different canvases, as in the
evaluation.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

#: Version of the artifact layout written by irst_jax.serving.export and read here (2: the module
#: takes per-image valid sizes; version 1 modules took images of one size without them).
FORMAT_VERSION = 2
#: The manifest's "format": a name of the artifact format, not a module path (artifacts
#: written before the serving package carry it too), so it stays as it was.
FORMAT_NAME = "irst_jax.export"
MODULE_FILE = "model.jaxexport"
WEIGHTS_FILE = "weights.npz"
MANIFEST_FILE = "manifest.json"
#: Largest image side the exported module accepts (int32 component labels).
MAX_SIDE = 16384
#: Canvas sides are multiples of this unless the manifest says otherwise (every model's 32).
PAD_MULTIPLE = 32
UINT16_SCALINGS = ("full_range", "min_max")

#: forward(images [B, H, W, 1] float32 0..255, sizes [B, 2] int32 (h, w of each image in the
#:   top-left corner), logit_threshold float32 scalar)
#:   -> (logits [B, H, W, 1] float32, labels [B, H, W] int32, 0 = background and padding)
Forward = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[Any, Any]]


class ArtifactError(ValueError):
  """An exported artifact is missing a file, damaged, or fails its checksum."""


class IncompatibleArtifactError(ArtifactError):
  """An artifact written by an irst_jax / JAX version this loader cannot read."""


@dataclasses.dataclass(frozen=True)
class Detection:
  """One detected target: an 8-connected component of the binary mask.

  Coordinates are in pixels of the input image, x = column, y = row, origin at the centre of
  the top-left pixel. `target_id` numbers the components 1, 2, ... in raster order of their
  first pixel (the order of ``skimage.measure.label``); the bounding box is inclusive.
  Scores are sigmoid probabilities of the component's pixels.
  """

  target_id: int
  x: float            # centroid column (mean of the pixels' columns)
  y: float            # centroid row
  area: int           # pixels
  x_min: int
  y_min: int
  x_max: int
  y_max: int
  peak_score: float
  mean_score: float

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Prediction:
  """`score` float32 [H, W] sigmoid probabilities; `mask` bool [H, W] (score above the
  threshold, decided on the logits); `detections` the mask's components."""

  score: np.ndarray
  mask: np.ndarray
  detections: list[Detection]


def to_grey(image: np.ndarray, uint16_scaling: str = "full_range") -> np.ndarray:
  """Grey float32 [H, W] on the 0..255 scale of the training images, from an image array.

  Args:
    image: [H, W], [H, W, 1], [H, W, 2] (grey + alpha), [H, W, 3] (RGB) or [H, W, 4]
      (RGBA); alpha is ignored. uint8 is used as is; uint16 is mapped to 0..255 by
      `uint16_scaling`; bool maps to {0, 255}; float and other integer arrays must already
      be on the 0..255 scale. RGB uses ITU-R 601-2 luma like the training data
      (``PIL.Image.convert('L')``: integer arithmetic, bit-exact for uint8).
    uint16_scaling: 'full_range' (x * 255 / 65535) or 'min_max' (each image stretched
      from its own minimum..maximum to 0..255; for raw sensor frames that use only part
      of the 16-bit range). A choice left open by the papers, whose data are 8-bit.

  Raises:
    ValueError: empty image, unsupported shape, dtype or scaling, non-finite values.
  """
  image = np.asarray(image)
  if uint16_scaling not in UINT16_SCALINGS:
    raise ValueError(f"uint16_scaling must be one of {UINT16_SCALINGS}, got {uint16_scaling!r}")
  if image.ndim == 3 and image.shape[-1] in (1, 2):
    image = image[..., 0]
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
    raise ValueError(f"expected an image [H, W] or [H, W, C] with C in 1..4, got shape "
                     f"{image.shape}")
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise ValueError(f"empty image of shape {image.shape}")
  if image.dtype == bool:
    image = image.astype(np.uint8) * 255
  if image.dtype.kind not in "uif":
    raise ValueError(f"unsupported image dtype {image.dtype}; expected uint8, uint16 or float")
  if image.ndim == 3:
    rgb = image[..., :3]
    if image.dtype == np.uint8:  # PIL's convert('L'): (R*19595 + G*38470 + B*7471 + 2^15) >> 16
      grey = (rgb.astype(np.uint32) @ np.array([19595, 38470, 7471], np.uint32) + 0x8000) >> 16
      image = grey.astype(np.uint8)
    else:
      image = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  if image.dtype == np.uint16:
    x = image.astype(np.float64)
    if uint16_scaling == "full_range":
      return (x * (255.0 / 65535.0)).astype(np.float32)
    low, high = x.min(), x.max()
    return ((x - low) * (255.0 / max(high - low, 1.0))).astype(np.float32)
  image = image.astype(np.float32)
  if not np.all(np.isfinite(image)):
    raise ValueError("image holds NaN or infinite values")
  return image


def find_detections(labels: np.ndarray, score: np.ndarray) -> list[Detection]:
  """The components of a label map [H, W] (0 = background) with their scores [H, W]."""
  labels = np.asarray(labels)
  score = np.asarray(score, np.float64)
  rows, cols = np.nonzero(labels)  # raster order
  if rows.size == 0:
    return []
  ids, first, inverse = np.unique(labels[rows, cols], return_index=True, return_inverse=True)
  order = np.argsort(first, kind="stable")  # raster order of each component's first pixel
  n = ids.size
  area = np.bincount(inverse, minlength=n)
  values = score[rows, cols]

  def reduce(fn, init, data):
    out = np.full(n, init, data.dtype)
    fn.at(out, inverse, data)
    return out

  stats = dict(
      x=np.bincount(inverse, cols, n) / area, y=np.bincount(inverse, rows, n) / area,
      x_min=reduce(np.minimum, cols.max(), cols), y_min=reduce(np.minimum, rows.max(), rows),
      x_max=reduce(np.maximum, 0, cols), y_max=reduce(np.maximum, 0, rows),
      peak_score=reduce(np.maximum, -np.inf, values),
      mean_score=np.bincount(inverse, values, n) / area)
  return [Detection(target_id=k + 1, area=int(area[i]),
                    **{key: (float(v[i]) if v.dtype.kind == "f" else int(v[i]))
                       for key, v in stats.items()})
          for k, i in enumerate(order)]


def logit(probability: float) -> float:
  """log(p / (1 - p)), the logit threshold of a probability threshold (as the evaluation)."""
  if not 0.0 < probability < 1.0:
    raise ValueError(f"threshold must be a probability in (0, 1), got {probability}")
  return math.log(probability / (1.0 - probability))


def sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_manifest(directory: pathlib.Path) -> dict[str, Any]:
  """The manifest of an artifact directory, checked for format and version.

  Raises:
    ArtifactError: missing or unreadable manifest, or not an irst_jax artifact.
    IncompatibleArtifactError: another format version.
  """
  path = directory / MANIFEST_FILE
  if not path.is_file():
    raise ArtifactError(f"{path} not found: {directory} is not an exported irst_jax detector "
                        f"(expected {MANIFEST_FILE}, {MODULE_FILE}, {WEIGHTS_FILE})")
  try:
    manifest = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ArtifactError(f"cannot read {path}: {e}") from e
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
    raise ArtifactError(f"{path} is not an irst_jax export manifest "
                        f"(expected \"format\": \"{FORMAT_NAME}\")")
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    written_by = manifest.get("versions", {}).get("irst_jax", "an unknown version")
    raise IncompatibleArtifactError(
        f"{path}: artifact format version {version!r} (written by irst_jax {written_by}); "
        f"this loader reads version {FORMAT_VERSION}. Re-export the workdir with this "
        "irst_jax version, or load it with the irst_jax version that wrote it.")
  return manifest


def _checked_file(directory: pathlib.Path, manifest: dict, name: str) -> pathlib.Path:
  path = directory / name
  if not path.is_file():
    raise ArtifactError(f"{path} is missing")
  expected = manifest.get("files", {}).get(name, {}).get("sha256")
  if expected != sha256(path):
    raise ArtifactError(f"{path} does not match the sha256 checksum of "
                        f"{directory / MANIFEST_FILE} (damaged or modified file)")
  return path


def _check_manifest(manifest: dict[str, Any], exported: Any, path: pathlib.Path) -> None:
  """Checks the manifest fields the loader relies on against the deserialized module.

  `threshold` must be a probability in (0, 1); `input.shape` (e.g. ``["b", "h", "w", 1]``)
  and `input.dtype` must be the module's image argument (``exported.in_avals``: the first
  rank-4 argument after the weights), whose channels must be the 1 grey channel that
  :meth:`Detector.predict_batch` feeds.

  Raises:
    ArtifactError: naming the field, its value, `path` and what was expected.
  """
  threshold = manifest.get("threshold")
  if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
      or not 0.0 < threshold < 1.0):
    raise ArtifactError(f"threshold {threshold!r} in {path}: expected a probability in (0, 1)")
  args, _ = jax.tree_util.tree_unflatten(exported.in_tree, exported.in_avals)
  images = next((a for a in args[1:] if len(getattr(a, "shape", ())) == 4), None)
  if images is None:
    raise ArtifactError(f"{path.parent / MODULE_FILE} takes no image argument [b, h, w, c]; "
                        "expected a module written by irst_jax.serving.export")
  def dims(shape):
    return [d if isinstance(d, int) else str(d) for d in shape]

  module_shape = dims(images.shape)
  spec = manifest.get("input") if isinstance(manifest.get("input"), dict) else {}
  shape, dtype = spec.get("shape"), spec.get("dtype")
  if not isinstance(shape, list) or dims(shape) != module_shape:
    raise ArtifactError(f"input shape {shape!r} in {path} does not match the module's image "
                        f"input {module_shape}")
  if dtype != str(images.dtype):
    raise ArtifactError(f"input dtype {dtype!r} in {path} does not match the module's image "
                        f"input dtype {str(images.dtype)!r}")
  if module_shape[-1] != 1:
    raise ArtifactError(f"{path.parent / MODULE_FILE} takes images with {module_shape[-1]} "
                        "channels; this loader feeds grey images [b, h, w, 1]")


def load_export(path: str | pathlib.Path) -> tuple[Forward, dict[str, Any]]:
  """Loads an exported artifact (its directory or its manifest.json): (forward, manifest).

  Raises:
    ArtifactError: missing/damaged files, checksum mismatch, manifest fields (threshold,
      input shape and dtype) that do not fit the module (:func:`_check_manifest`).
    IncompatibleArtifactError: another format version, a module this JAX cannot
      deserialize (written by a newer JAX), or no lowering for this JAX backend.
  """
  directory = pathlib.Path(path)
  if directory.name == MANIFEST_FILE:
    directory = directory.parent
  manifest = read_manifest(directory)
  module_path = _checked_file(directory, manifest, MODULE_FILE)
  weights_path = _checked_file(directory, manifest, WEIGHTS_FILE)
  try:
    exported = jax.export.deserialize(bytearray(module_path.read_bytes()))
  except Exception as e:  # flatbuffers / version errors of any kind
    raise IncompatibleArtifactError(
        f"cannot deserialize {module_path} (written with jax "
        f"{manifest.get('versions', {}).get('jax')}, this is jax {jax.__version__}): {e}") from e
  _check_manifest(manifest, exported, directory / MANIFEST_FILE)
  backend = jax.default_backend()
  if backend not in exported.platforms:
    raise IncompatibleArtifactError(
        f"{module_path} was exported for {', '.join(exported.platforms)}, not for this JAX "
        f"backend {backend!r}; re-export with --export_platforms including it")
  with np.load(weights_path) as data:
    weights = jax.device_put({k: data[k] for k in data.files})
  call = jax.jit(exported.call)
  return (lambda images, sizes, threshold: call(weights, images, sizes, threshold)), manifest


class Detector:
  """A trained IRSTD network as a function of an image: score map, mask, detections.

  Args:
    forward: the network function (see module docstring), e.g. from :func:`load_export`.
    manifest: the artifact manifest (model, normalisation, threshold, versions, ...).
    threshold: probability threshold of the mask (default: the manifest's, i.e. the
      training config's eval.threshold, 0.5 in every config).
    uint16_scaling: how 16-bit images map to 0..255, see :func:`to_grey`.

  Raises:
    ValueError: threshold outside (0, 1), unknown uint16_scaling.
  """

  def __init__(self, forward: Forward, manifest: dict[str, Any],
               threshold: Optional[float] = None, uint16_scaling: str = "full_range"):
    self.forward = forward
    self.manifest = manifest
    self.threshold = float(manifest["threshold"] if threshold is None else threshold)
    self.logit_threshold = np.float32(logit(self.threshold))
    if uint16_scaling not in UINT16_SCALINGS:
      raise ValueError(f"uint16_scaling must be one of {UINT16_SCALINGS}, got {uint16_scaling!r}")
    self.uint16_scaling = uint16_scaling

  @classmethod
  def from_export(cls, path: str | pathlib.Path, **kwargs) -> "Detector":
    """The detector of an exported artifact directory; needs only jax and numpy."""
    return cls(*load_export(path), **kwargs)

  @property
  def pad_multiple(self) -> int:
    """Side multiple of default canvases: the manifest's ``input.pad_multiple`` (32)."""
    return int(self.manifest.get("input", {}).get("pad_multiple", PAD_MULTIPLE))

  def __call__(self, image: np.ndarray) -> Prediction:
    """Predicts one image of any size (see :func:`to_grey` for shapes and dtypes)."""
    return self.predict_batch([image])[0]

  def predict_batch(self, images: Sequence[np.ndarray], canvas: Optional[tuple[int, int]] = None,
                    batch_size: Optional[int] = None) -> list[Prediction]:
    """Predicts images of any sizes in one network call on one padded canvas.

    Each image is placed in the top-left corner of a `canvas` (H, W) and the module is told
    its size, so padding never enters its mask or detections; results are cropped back to
    each image's size. One compilation serves every call with the same canvas and batch.

    Args:
      images: arrays accepted by :func:`to_grey`, of any sizes.
      canvas: (H, W) holding every image; default: the smallest multiple of
        :attr:`pad_multiple` holding them all.
      batch_size: when given, the batch is completed with dummy images (zeros of size 1 x 1)
        to this many, so that batches of fewer images reuse the same compiled program.

    Returns:
      One Prediction per image, in order.

    Raises:
      ValueError: sides above MAX_SIDE, a canvas that does not hold an image or is not
        positive, more images than batch_size, bad arrays (to_grey).
    """
    grey = [to_grey(image, self.uint16_scaling) for image in images]
    if not grey:
      return []
    for g in grey:
      if max(g.shape) > MAX_SIDE:
        raise ValueError(f"image of {g.shape[0]}x{g.shape[1]} pixels: sides above {MAX_SIDE} "
                         "are not supported")
    if canvas is None:
      m = self.pad_multiple
      canvas = (max(-(-g.shape[0] // m) * m for g in grey),
                max(-(-g.shape[1] // m) * m for g in grey))
    height, width = (int(side) for side in canvas)
    if min(height, width) < 1 or max(height, width) > MAX_SIDE:
      raise ValueError(f"canvas must be (H, W) with 1 <= H, W <= {MAX_SIDE}, got {canvas}")
    too_big = [g.shape for g in grey if g.shape[0] > height or g.shape[1] > width]
    if too_big:
      raise ValueError(f"canvas {height}x{width} does not hold an image of "
                       f"{too_big[0][0]}x{too_big[0][1]} pixels")
    count = len(grey) if batch_size is None else int(batch_size)
    if count < len(grey):
      raise ValueError(f"{len(grey)} images do not fit in a batch of {batch_size}")
    batch = np.zeros((count, height, width, 1), np.float32)
    sizes = np.ones((count, 2), np.int32)  # dummies: a 1 x 1 image of zeros
    for i, g in enumerate(grey):
      batch[i, :g.shape[0], :g.shape[1], 0] = g
      sizes[i] = g.shape
    logits, labels = self.forward(batch, sizes, self.logit_threshold)
    logits, labels = np.asarray(logits)[:len(grey), ..., 0], np.asarray(labels)[:len(grey)]
    predictions = []
    for g, lg, lab in zip(grey, logits, labels):
      h, w = g.shape
      with np.errstate(over="ignore"):  # exp(-logit) = inf for logits below -709: score 0
        score = (1.0 / (1.0 + np.exp(-lg[:h, :w].astype(np.float64)))).astype(np.float32)
      lab = lab[:h, :w]
      predictions.append(Prediction(score=score, mask=lab > 0,
                                    detections=find_detections(lab, score)))
    return predictions
