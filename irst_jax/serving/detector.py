"""Run a trained detector on images of any size: score map, binary mask and detections.

    detector = Detector.from_export("runs/acm_unet/export")    # only jax + numpy needed
    detector = export.workdir_detector("runs/acm_unet")        # in-framework (irst_jax.serving)
    result = detector(image)        # [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; any size
    result.score, result.mask, result.detections

This module imports nothing but the standard library, numpy and jax at import time (and
scipy, a dependency of jax, when it labels a mask on the host; onnxruntime when an artifact's
ONNX graph is loaded, :func:`load_onnx`, ``Detector.from_export(dir, backend="onnxruntime")``),
so that
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

Frames of any size (tiling): a frame larger than the tiling limit (:attr:`Detector.tile`;
by default frames of more than ``AUTO_TILE_PIXELS`` = 2048 x 2048 pixels, in tiles of
``DEFAULT_TILE`` = 1024 with an overlap of 128, and frames with a side above MAX_SIDE) is
run in overlapping square tiles, all of
one shape (one compilation) and at origins that are multiples of the model's 32, so that
every tile sees the strided grid of whole-frame inference. The score map is stitched by
centre cropping: along each axis two neighbouring tiles meet in the middle of their
overlap, so each pixel comes from the tile where it lies farthest from a tile border (at
least overlap / 2 pixels from any border inside the frame). The mask is thresholded and its
components labelled on the stitched map (on the host, 8-connected, as the module does), so
a target straddling a tile border is one detection. For a network whose receptive field
reaches less than overlap / 2 pixels, the stitched map equals whole-frame inference; the
networks of irst_jax see further (and ACM's global attention pools each whole tile), so
their stitched scores differ slightly from whole-frame ones near tile borders. Memory is
that of the frame's maps (grey, score, mask and labels) plus one batch of tiles.

Test-time augmentation (:attr:`Detector.tta`): ``'flips'`` runs the network on the 4 flips
of each image (identity, horizontal, vertical, both), ``'flips_transpose'`` on the 8
transforms of the dihedral group of the square (the flips of the image and of its
transpose), maps each output back and averages the sigmoid probabilities (not the logits:
the average is the ensemble's probability, on the scale of the threshold, and one transform
with an extreme logit cannot outvote the others); the mask is ``mean > threshold`` and its
components are labelled on the host. Each pixel's values are summed in sorted order, so the
result is exactly equivariant: TTA of a flipped (or transposed) image is the flipped TTA of
the image, bit for bit. Padding stays
bottom/right of each transformed image, as for any image.
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
#: The ONNX graph of an export with --format=onnx (irst_jax.serving.onnx_export).
ONNX_FILE = "model.onnx"
#: Runtimes of :meth:`Detector.from_export`: the jax.export module, or model.onnx under
#: ONNX Runtime.
BACKENDS = ("jax", "onnxruntime")
WEIGHTS_FILE = "weights.npz"
MANIFEST_FILE = "manifest.json"
#: Largest image side the exported module accepts (int32 component labels).
MAX_SIDE = 16384
#: Canvas sides are multiples of this unless the manifest says otherwise (every model's 32).
PAD_MULTIPLE = 32
UINT16_SCALINGS = ("full_range", "min_max")
#: Test-time augmentations: none, the 4 flips, the 8 flips of the image and its transpose.
TTA_MODES = ("none", "flips", "flips_transpose")
#: Frames of more pixels than this are tiled unless the Detector's tile says otherwise.
AUTO_TILE_PIXELS = 2048 * 2048
#: Tile side and overlap of automatic tiling (pixels, multiples of PAD_MULTIPLE).
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 128
#: Tiles per network call (the batch of the tiled program).
DEFAULT_TILE_BATCH = 2

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


def to_grey(image: np.ndarray, uint16_scaling: str = "full_range",
            value_range: Optional[tuple[float, float]] = None) -> np.ndarray:
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
    value_range: for 'min_max', the (minimum, maximum) to stretch from instead of the
      image's own (the tiles of a frame use the frame's).

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
    low, high = (x.min(), x.max()) if value_range is None else value_range
    return ((x - low) * (255.0 / max(high - low, 1.0))).astype(np.float32)
  image = image.astype(np.float32)
  if not np.all(np.isfinite(image)):
    raise ValueError("image holds NaN or infinite values")
  return image


def find_detections(labels: np.ndarray, score: np.ndarray) -> list[Detection]:
  """The components of a label map [H, W] (0 = background) with their scores [H, W]."""
  labels = np.asarray(labels)
  rows, cols = np.nonzero(labels)  # raster order
  if rows.size == 0:
    return []
  ids, first, inverse = np.unique(labels[rows, cols], return_index=True, return_inverse=True)
  order = np.argsort(first, kind="stable")  # raster order of each component's first pixel
  n = ids.size
  area = np.bincount(inverse, minlength=n)
  values = np.asarray(score)[rows, cols].astype(np.float64)  # no float64 copy of the map

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


def onnx_graph_shape(manifest: dict[str, Any]) -> tuple[int, int]:
  """(height, width) of the frames an artifact's ONNX graph takes (its manifest's ``onnx``
  section: ``height`` and ``width``, or the ``side`` of older square graphs)."""
  spec = manifest["onnx"]
  return int(spec.get("height", spec.get("side"))), int(spec.get("width", spec.get("side")))


def load_onnx(path: str | pathlib.Path, providers: Optional[Sequence[str]] = None
              ) -> tuple[Forward, dict[str, Any]]:
  """Loads the ONNX graph of an exported artifact (its directory or manifest.json) into an
  ONNX Runtime session: (forward, manifest), forward with the signature of
  :func:`load_export`'s.

  The graph (``irst_jax.serving.onnx_export``) takes grey images [b, GH, GW, 1] (0..255) of
  one size (the manifest's ``onnx.height`` and ``onnx.width``; ``onnx.side`` in artifacts
  written before non-square graphs) and returns logits; forward pads each image of the
  canvas [B, H, W, 1] to GH x GW with the training mean (which the graph's normalisation maps
  to 0, the padding of the jax.export module), returns the logits on the canvas (outside the
  graph, where no image lies, the lowest float32) and labels the 8-connected components of
  ``logits > logit_threshold`` inside each image on the host (:func:`label_mask`; none for an
  infinite threshold). A canvas may be larger than the graph; its images may not.

  Args:
    providers: ONNX Runtime execution providers (default: those available, e.g. CUDA, CPU).

  Raises:
    ArtifactError: no ONNX graph in the artifact (exported without --format=onnx), missing
      or damaged file; ImportError: onnxruntime is not installed. forward raises ValueError
      for an image larger than the graph.
  """
  directory = pathlib.Path(path)
  if directory.name == MANIFEST_FILE:
    directory = directory.parent
  manifest = read_manifest(directory)
  spec = manifest.get("onnx")
  if not isinstance(spec, dict) or not ({"side", "height"} & set(spec)):
    raise ArtifactError(f"{directory} holds no ONNX graph ({ONNX_FILE}); export the workdir with "
                        "--format=onnx (or --format=jax,onnx)")
  model_path = _checked_file(directory, manifest, spec.get("file", ONNX_FILE))
  try:
    import onnxruntime  # optional: the onnxruntime backend only
  except ImportError as e:
    raise ImportError(f"the onnxruntime backend needs ONNX Runtime ({e}): pip install "
                      "onnxruntime (or \"irst_jax[onnx]\")") from e
  session = onnxruntime.InferenceSession(
      str(model_path), providers=list(providers or onnxruntime.get_available_providers()))
  graph_height, graph_width = onnx_graph_shape(manifest)
  pad = np.float32(spec["pad_value"])
  input_name = spec.get("input", {}).get("name", "images")

  def forward(images, sizes, logit_threshold):
    images, sizes = np.asarray(images, np.float32), np.asarray(sizes)
    count, height, width, _ = images.shape
    for h, w in sizes:
      if h > graph_height or w > graph_width:
        raise ValueError(f"image of {h}x{w} pixels is larger than the ONNX graph's "
                         f"{graph_height}x{graph_width} ({model_path}); tile the frame or "
                         "re-export with a larger --onnx_size")
    canvas = np.full((count, graph_height, graph_width, 1), pad, np.float32)
    for i, (h, w) in enumerate(sizes):
      canvas[i, :h, :w] = images[i, :h, :w]
    logits = session.run(None, {input_name: canvas})[0][:, :height, :width]
    if logits.shape[1:3] != (height, width):   # a canvas larger than the graph
      inside, logits = logits, np.full((count, height, width, 1), np.finfo(np.float32).min,
                                       np.float32)
      logits[:, :inside.shape[1], :inside.shape[2]] = inside
    labels = np.zeros((count, height, width), np.int32)
    if np.isfinite(logit_threshold):
      for i, (h, w) in enumerate(sizes):
        labels[i, :h, :w] = label_mask(logits[i, :h, :w, 0] > logit_threshold)
    return logits, labels

  return forward, manifest


#: A transform of the dihedral group: (transpose, flip rows (vertical), flip columns
#: (horizontal)), applied in that order; see :func:`apply_transform`.
Transform = tuple[bool, bool, bool]


def tta_transforms(tta: str) -> list[Transform]:
  """The transforms of a test-time augmentation mode (identity first).

  Raises:
    ValueError: `tta` not in TTA_MODES.
  """
  if tta not in TTA_MODES:
    raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
  flips = [(False, False), (False, True), (True, False), (True, True)]
  if tta == "none":
    flips = flips[:1]
  transposes = (False, True) if tta == "flips_transpose" else (False,)
  return [(t, rows, cols) for t in transposes for rows, cols in flips]


def apply_transform(x: np.ndarray, transform: Transform) -> np.ndarray:
  """`x` [..., H, W] transposed (to [..., W, H]) and/or flipped (views, no copy)."""
  transpose, flip_rows, flip_cols = transform
  if transpose:
    x = np.swapaxes(x, -1, -2)
  if flip_rows:
    x = x[..., ::-1, :]
  if flip_cols:
    x = x[..., :, ::-1]
  return x


def invert_transform(x: np.ndarray, transform: Transform) -> np.ndarray:
  """The inverse of :func:`apply_transform`: ``invert_transform(apply_transform(x, t), t) == x``."""
  transpose, flip_rows, flip_cols = transform
  if flip_cols:
    x = x[..., :, ::-1]
  if flip_rows:
    x = x[..., ::-1, :]
  if transpose:
    x = np.swapaxes(x, -1, -2)
  return x


def axis_tiles(length: int, tile: int, overlap: int, multiple: int = PAD_MULTIPLE
               ) -> tuple[int, list[tuple[int, int, int]]]:
  """Tiles along one axis of `length` pixels: (tile size, [(origin, start, stop)]).

  Tile k covers ``[origin, origin + size)`` (the part beyond `length` is padding) and owns
  the output pixels ``[start, stop)``. The size is `tile`, or the axis padded to `multiple`
  when that is shorter (one tile). Origins are ``0, s, 2 s, ...`` with the stride
  ``s = tile - overlap`` and a last one ending at the padded axis end, all multiples of
  `multiple` (the network's strided grid stays that of the whole frame); two neighbours
  meet in the middle of their overlap (centre-crop stitching), so every owned pixel inside
  the frame is at least ``overlap // 2`` pixels from its tile's borders.

  Raises:
    ValueError: length < 1; tile or overlap not multiples of `multiple`; overlap outside
      ``[0, tile)``.
  """
  if length < 1:
    raise ValueError(f"axis length must be positive, got {length}")
  if tile < multiple or tile % multiple or overlap < 0 or overlap % multiple or overlap >= tile:
    raise ValueError(f"tile {tile} and overlap {overlap}: expected a tile that is a positive "
                     f"multiple of {multiple} and an overlap in [0, tile) that is a multiple "
                     f"of {multiple}")
  padded = -(-length // multiple) * multiple
  size = min(tile, padded)
  last = padded - size
  origins = list(range(0, last, tile - overlap)) + [last]
  cuts = ([0] + [min((origins[k + 1] + origins[k] + size) // 2, length)
                 for k in range(len(origins) - 1)] + [length])
  return size, [(o, cuts[k], cuts[k + 1]) for k, o in enumerate(origins)]


def label_mask(mask: np.ndarray) -> np.ndarray:
  """int32 [H, W] labels of the 8-connected components of a bool mask (0 = background), on
  the host (``scipy.ndimage.label``; the components of ``metrics.connected_components``)."""
  from scipy import ndimage  # a dependency of jax; imported when a mask is labelled on the host
  labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
  return labels


def _sigmoid(logits: np.ndarray) -> np.ndarray:
  """float64 sigmoid of float32 logits (0 below -709, where exp overflows)."""
  with np.errstate(over="ignore"):
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


class Detector:
  """A trained IRSTD network as a function of an image: score map, mask, detections.

  Args:
    forward: the network function (see module docstring), e.g. from :func:`load_export`.
    manifest: the artifact manifest (model, normalisation, threshold, versions, ...).
    threshold: probability threshold of the mask (default: the manifest's, i.e. the
      training config's eval.threshold, 0.5 in every config).
    uint16_scaling: how 16-bit images map to 0..255, see :func:`to_grey`.
    tta: test-time augmentation, one of TTA_MODES (module docstring).
    tile: tile side in pixels (a multiple of :attr:`pad_multiple`): frames with a side above
      it are run in tiles (module docstring); None (default): frames of more than
      AUTO_TILE_PIXELS pixels or with a side above MAX_SIDE are tiled with DEFAULT_TILE
      (rounded up to a multiple of pad_multiple);
      0: never tile.
    overlap: overlap of neighbouring tiles in pixels (a multiple of pad_multiple, below the
      tile); default: tile / 8 rounded down to a multiple of pad_multiple (128 for 1024).
    tile_batch: tiles per network call.

  Raises:
    ValueError: threshold outside (0, 1), unknown uint16_scaling or tta, a tile or overlap
      that is not a multiple of pad_multiple, an overlap not below the tile, tile_batch < 1.
  """

  def __init__(self, forward: Forward, manifest: dict[str, Any],
               threshold: Optional[float] = None, uint16_scaling: str = "full_range",
               tta: str = "none", tile: Optional[int] = None, overlap: Optional[int] = None,
               tile_batch: int = DEFAULT_TILE_BATCH):
    self.forward = forward
    self.manifest = manifest
    self.threshold = float(manifest["threshold"] if threshold is None else threshold)
    self.logit_threshold = np.float32(logit(self.threshold))
    if uint16_scaling not in UINT16_SCALINGS:
      raise ValueError(f"uint16_scaling must be one of {UINT16_SCALINGS}, got {uint16_scaling!r}")
    self.uint16_scaling = uint16_scaling
    self.transforms = tta_transforms(tta)
    self.tta = tta
    m = self.pad_multiple
    self.tile = tile
    #: (height, width) of the frames the network takes whole (an ONNX graph's fixed size, set
    #: by :meth:`from_export` when the tile is automatic): frames that fit run in one piece
    self.graph_shape: Optional[tuple[int, int]] = None
    #: automatic tile side: DEFAULT_TILE rounded up to the module's pad multiple
    self.default_tile = -(-DEFAULT_TILE // m) * m
    if overlap is None:
      overlap = ((self.default_tile if not tile else tile) // 8) // m * m
    self.overlap = int(overlap)
    if tile_batch < 1:
      raise ValueError(f"tile_batch must be at least 1, got {tile_batch}")
    self.tile_batch = int(tile_batch)
    if tile is not None and tile > MAX_SIDE:
      raise ValueError(f"tile {tile} is above the module's largest side {MAX_SIDE}")
    if tile is None or tile > 0:
      axis_tiles(1, self.default_tile if tile is None else int(tile), self.overlap, m)  # checks
    elif tile < 0:
      raise ValueError(f"tile must be 0 (no tiling), positive or None (automatic), got {tile}")

  @classmethod
  def from_export(cls, path: str | pathlib.Path, backend: str = "jax", **kwargs) -> "Detector":
    """The detector of an exported artifact directory.

    Args:
      backend: "jax" (the jax.export module: needs only jax and numpy) or "onnxruntime"
        (model.onnx, :func:`load_onnx`: needs onnxruntime). The ONNX graph takes frames of
        one size GH x GW: frames that fit run in one piece, larger ones in square tiles of
        min(GH, GW) (``tile`` defaults to that and may not exceed it; a tile given
        explicitly tiles every frame with a side above it).
      kwargs: :class:`Detector`'s arguments.

    Raises:
      ValueError: unknown backend, a tile above the ONNX graph's smaller side, transposing
        TTA with a non-square ONNX graph; what
        :func:`load_export` / :func:`load_onnx` and :class:`Detector` raise.
    """
    if backend == "jax":
      return cls(*load_export(path), **kwargs)
    if backend != "onnxruntime":
      raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    forward, manifest = load_onnx(path)
    graph_shape = onnx_graph_shape(manifest)
    largest = min(graph_shape)
    automatic = kwargs.get("tile") is None
    if automatic:
      kwargs["tile"] = largest
    elif not 0 < kwargs["tile"] <= largest:
      raise ValueError(f"tile {kwargs['tile']}: the ONNX graph of {path} takes frames of at "
                       f"most {graph_shape[0]}x{graph_shape[1]}; expected a tile in "
                       f"1..{largest}")
    detector = cls(forward, manifest, **kwargs)
    if graph_shape[0] != graph_shape[1] and any(t[0] for t in detector.transforms):
      raise ValueError(f"tta {detector.tta!r} transposes frames, which the "
                       f"{graph_shape[0]}x{graph_shape[1]} ONNX graph of {path} cannot take; "
                       "use tta 'flips' or export a square --onnx_size")
    if automatic:
      detector.graph_shape = graph_shape
    return detector

  @property
  def pad_multiple(self) -> int:
    """Side multiple of default canvases: the manifest's ``input.pad_multiple`` (32)."""
    return int(self.manifest.get("input", {}).get("pad_multiple", PAD_MULTIPLE))

  def tile_size(self, shape: tuple[int, int]) -> Optional[int]:
    """The tile side an image of `shape` (H, W) is run with, or None (one piece)."""
    h, w = (int(x) for x in shape[:2])
    if self.graph_shape is not None and h <= self.graph_shape[0] and w <= self.graph_shape[1]:
      return None
    if self.tile is None:
      return self.default_tile if h * w > AUTO_TILE_PIXELS or max(h, w) > MAX_SIDE else None
    if self.tile == 0:
      return None
    return int(self.tile) if max(h, w) > self.tile else None

  def __call__(self, image: np.ndarray) -> Prediction:
    """Predicts one image of any size (see :func:`to_grey` for shapes and dtypes)."""
    return self.predict_batch([image])[0]

  def _network(self, grey: Sequence[np.ndarray], canvas: tuple[int, int], count: int,
               logit_threshold: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(logits float32 [n, H, W], labels int32 [n, H, W]) of n images on a canvas (H, W),
    the batch completed to `count` with dummy images (zeros of size 1 x 1)."""
    batch = np.zeros((count, canvas[0], canvas[1], 1), np.float32)
    sizes = np.ones((count, 2), np.int32)
    for i, g in enumerate(grey):
      batch[i, :g.shape[0], :g.shape[1], 0] = g
      sizes[i] = g.shape
    logits, labels = self.forward(batch, sizes, logit_threshold)
    return np.asarray(logits)[:len(grey), ..., 0], np.asarray(labels)[:len(grey)]

  def _maps(self, grey: Sequence[np.ndarray], canvas: tuple[int, int], count: int,
            labelled: bool) -> list[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    """[(score float32 [h, w], mask bool [h, w], labels int32 [h, w] or None)] of images
    of one canvas: the module's labels when `labelled` and without TTA, else None (the
    caller labels the mask)."""
    if self.tta == "none":
      threshold = self.logit_threshold if labelled else np.float32(np.inf)  # inf: no labelling
      logits, labels = self._network(grey, canvas, count, threshold)
      out = []
      for g, lg, lab in zip(grey, logits, labels):
        h, w = g.shape
        lg = lg[:h, :w]
        out.append((_sigmoid(lg).astype(np.float32), lg > self.logit_threshold,
                    lab[:h, :w] if labelled else None))
      return out
    stacks = [np.empty((len(self.transforms),) + g.shape, np.float64) for g in grey]
    for k, t in enumerate(self.transforms):
      moved = [apply_transform(g, t) for g in grey]
      logits, _ = self._network(moved, canvas[::-1] if t[0] else canvas, count,
                                np.float32(np.inf))
      for stack, m, lg in zip(stacks, moved, logits):
        stack[k] = invert_transform(_sigmoid(lg[:m.shape[0], :m.shape[1]]), t)
    out = []
    for stack in stacks:
      # Summed in sorted order: the sum of a pixel's values does not depend on which
      # transform gave which, so TTA of a transformed image is exactly the transformed TTA.
      stack.sort(axis=0)
      mean = stack.sum(axis=0) / len(self.transforms)
      out.append((mean.astype(np.float32), mean > self.threshold, None))
    return out

  def predict_tiled(self, image: np.ndarray, tile: int) -> Prediction:
    """Predicts one image (any array :func:`to_grey` accepts) in tiles of side `tile`
    (module docstring), `tile_batch` tiles a network call. Each tile is converted to grey
    on its own (with the frame's minimum and maximum for 'min_max' scaling), so no float
    copy of the whole frame is made.

    Raises:
      ValueError: a tile or the detector's overlap that is not a multiple of pad_multiple;
        what :func:`to_grey` raises.
    """
    image = np.asarray(image)
    to_grey(image[:1, :1], self.uint16_scaling)  # checks shape and dtype
    value_range = None
    if self.uint16_scaling == "min_max" and image.dtype == np.uint16:
      plane = image[..., 0] if image.ndim == 3 and image.shape[-1] in (1, 2) else image
      value_range = (float(plane.min()), float(plane.max()))
    height, width = image.shape[:2]
    m = self.pad_multiple
    tile_h, rows = axis_tiles(height, tile, self.overlap, m)
    tile_w, cols = axis_tiles(width, tile, self.overlap, m)
    score = np.empty((height, width), np.float32)
    mask = np.empty((height, width), bool)
    tiles = [(r, c) for r in rows for c in cols]
    count = min(self.tile_batch, len(tiles))
    for start in range(0, len(tiles), count):
      chunk = tiles[start:start + count]
      crops = [to_grey(image[r[0]:r[0] + tile_h, c[0]:c[0] + tile_w], self.uint16_scaling,
                       value_range) for r, c in chunk]
      for ((y0, y1, y2), (x0, x1, x2)), (s, k, _) in zip(
          chunk, self._maps(crops, (tile_h, tile_w), count, labelled=False)):
        score[y1:y2, x1:x2] = s[y1 - y0:y2 - y0, x1 - x0:x2 - x0]
        mask[y1:y2, x1:x2] = k[y1 - y0:y2 - y0, x1 - x0:x2 - x0]
    labels = label_mask(mask)
    detections = find_detections(labels, score)
    del labels
    return Prediction(score=score, mask=mask, detections=detections)

  def predict_batch(self, images: Sequence[np.ndarray], canvas: Optional[tuple[int, int]] = None,
                    batch_size: Optional[int] = None) -> list[Prediction]:
    """Predicts images of any sizes in one network call on one padded canvas.

    Each image is placed in the top-left corner of a `canvas` (H, W) and the module is told
    its size, so padding never enters its mask or detections; results are cropped back to
    each image's size. One compilation serves every call with the same canvas and batch
    (with TTA, one call a transform; transposes run on the canvas (W, H)). Images that
    :meth:`tile_size` tiles are predicted one by one in tiles (:meth:`predict_tiled`),
    outside the canvas and the batch.

    Args:
      images: arrays accepted by :func:`to_grey`, of any sizes.
      canvas: (H, W) holding every image that is not tiled; default: the smallest multiple
        of :attr:`pad_multiple` holding them all.
      batch_size: when given, the batch is completed with dummy images (zeros of size 1 x 1)
        to this many, so that batches of fewer images reuse the same compiled program.

    Returns:
      One Prediction per image, in order.

    Raises:
      ValueError: sides above MAX_SIDE of an image that is not tiled, a canvas that does not
        hold an image or is not positive, more images than batch_size, bad arrays (to_grey).
    """
    results: list[Optional[Prediction]] = [None] * len(images)
    whole, grey_whole = [], []
    for i, image in enumerate(images):
      image = np.asarray(image)
      tile = self.tile_size(image.shape[:2]) if image.ndim in (2, 3) else None
      if tile is not None:
        results[i] = self.predict_tiled(image, tile)
        continue
      g = to_grey(image, self.uint16_scaling)
      if max(g.shape) > MAX_SIDE:
        raise ValueError(f"image of {g.shape[0]}x{g.shape[1]} pixels: sides above {MAX_SIDE} "
                         "are not supported without tiling")
      whole.append(i)
      grey_whole.append(g)
    if not whole:
      return results
    if canvas is None:
      m = self.pad_multiple
      canvas = (max(-(-g.shape[0] // m) * m for g in grey_whole),
                max(-(-g.shape[1] // m) * m for g in grey_whole))
    height, width = (int(side) for side in canvas)
    if min(height, width) < 1 or max(height, width) > MAX_SIDE:
      raise ValueError(f"canvas must be (H, W) with 1 <= H, W <= {MAX_SIDE}, got {canvas}")
    too_big = [g.shape for g in grey_whole if g.shape[0] > height or g.shape[1] > width]
    if too_big:
      raise ValueError(f"canvas {height}x{width} does not hold an image of "
                       f"{too_big[0][0]}x{too_big[0][1]} pixels")
    count = len(grey_whole) if batch_size is None else int(batch_size)
    if count < len(grey_whole):
      raise ValueError(f"{len(grey_whole)} images do not fit in a batch of {batch_size}")
    for i, (score, mask, labels) in zip(whole, self._maps(grey_whole, (height, width), count,
                                                          labelled=True)):
      if labels is None:
        labels = label_mask(mask)
      else:
        mask = labels > 0
      results[i] = Prediction(score=score, mask=mask, detections=find_detections(labels, score))
    return results
