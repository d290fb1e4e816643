"""Run a detector on image files, folders or globs; write masks, overlays and detections.

  python -m irst_jax.serving.predict --model=runs/acm_unet/export --input=frames/ --output=out/
  python -m irst_jax.serving.predict --model=runs/acm_unet --input='data/*.png' --input=x.tif \
      --output=out/ --save_scores --batch_size=8 [--threshold=0.5] [--uint16_scaling=min_max]
  python -m irst_jax.predict --model=runs/acm_unet/export --input=big.tif --tile=512 --overlap=64
  python -m irst_jax.predict --model=runs/acm_unet/export --input=clip.mp4 --save_video --tta=flips

--model is an exported artifact (irst_jax.serving.export; needs only jax + numpy) or a training
workdir (its --checkpoint, in-framework). --backend=onnxruntime runs an artifact's model.onnx
(exported with --format=onnx) under ONNX Runtime instead of its jax.export module.
Inputs: PNG, BMP, TIFF, JPEG; 1-bit, 8-bit grey,
palette, RGB(A), 16-bit grey (``I;16``) and 32-bit integer / float grey (TIFF) of any size;
folders are read non-recursively, globs may use ``**``. Every image's size is read from its
header first; at most four padded shapes ("canvases", multiples of the model's 32) are planned
for all inputs (:func:`irst_jax.data.canvas.plan_canvases`), each image goes to the smallest
canvas holding it, and the images of a canvas are predicted in batches of a fixed size
(--batch_size, or fewer when the canvas has fewer images; the last batch is completed with
dummy images), so a folder of any mix of sizes compiles at most four programs. The padding
never enters masks or detections (see :meth:`irst_jax.serving.detector.Detector.predict_batch`).
Images are decoded one batch at a time.

Large frames: a frame above the tiling limit (--tile; by default frames of more than 2048 x
2048 pixels, in tiles of 1024 overlapping by 128) is predicted alone in tiles of one shape
whose score maps are stitched before thresholding and labelling, so memory stays bounded and
no detection is split at a tile border (:mod:`irst_jax.serving.detector`); such frames may
have sides above the module's 16384. --tta=flips / flips_transpose averages the sigmoid
probabilities over 4 / 8 flips and transposes (exactly equivariant). Videos (the suffixes of
:data:`irst_jax.serving.video.SUFFIXES`, read with PyAV: the extra ``irst_jax[video]``) are
predicted frame by frame in batches, see :mod:`irst_jax.serving.video`; a video that cannot
be opened or decoded stops the command with a one-line error (exit status 2).

Written into --output:
  masks/<name>.png       binary mask, 0 / 255 (L)
  overlays/<name>.png    the grey image with mask pixels tinted red and each detection's
                         box (2 px margin) and target id in yellow
  scores/<name>.npy      float32 [H, W] sigmoid score map (with --save_scores)
  detections.csv         one row a detection: image, target_id, x, y (centroid, pixels),
                         area (pixels), x_min, y_min, x_max, y_max (inclusive), peak_score,
                         mean_score
  detections.json        per image: path, size, detections; the failures; the model manifest
  videos/<name>.csv|json|mp4   per video: see irst_jax.serving.video
<name> is the file's stem (made unique with _2, _3, ... when stems repeat). A file that
cannot be read is reported (naming it and why) and skipped; the others are still processed,
the failures are listed at the end and the exit code is 1.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import glob
import json
import pathlib
from typing import Iterable, Optional

import numpy as np
from absl import app, flags
from PIL import Image
from tqdm import tqdm

from irst_jax import compilation_cache, errors, platform_settings
from irst_jax.data import canvas as canvas_lib
from irst_jax.serving import detector as detector_lib
from irst_jax.serving import video as video_lib
from irst_jax.serving.draw import overlay

SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
CSV_FIELDS = ("image", "target_id", "x", "y", "area", "x_min", "y_min", "x_max", "y_max",
              "peak_score", "mean_score")


class ImageReadError(ValueError):
  """An input file is unreadable, truncated or of an unsupported image mode."""


def read_size(path: str | pathlib.Path) -> tuple[int, int]:
  """(H, W) of an image file from its header (the pixels are not decoded).

  Raises:
    ImageReadError: naming the file: not an image PIL can open.
  """
  path = pathlib.Path(path)
  try:
    with Image.open(path) as img:
      width, height = img.size
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
    raise ImageReadError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e
  return int(height), int(width)


def read_image(path: str | pathlib.Path) -> np.ndarray:
  """An image file as an array for :func:`irst_jax.serving.detector.to_grey`.

  Returns uint8 [H, W] for 1-bit, grey, palette and colour images (``convert('L')``, as the
  training data are read), uint16 [H, W] for 16-bit grey, and for 32-bit integer (``I``) or
  float (``F``) grey: uint16 when every value fits 0..65535, else float32 (0..255 scale).

  Raises:
    ImageReadError: naming the file: unreadable or truncated, or an unsupported mode.
  """
  path = pathlib.Path(path)
  try:
    with Image.open(path) as img:
      img.load()
      mode = img.mode
      if mode in _EIGHT_BIT_MODES:
        return np.asarray(img.convert("L"), np.uint8)
      if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(img).astype(np.uint16)
      if mode in ("I", "F"):
        array = np.asarray(img)
        if mode == "I" and array.min() >= 0 and array.max() <= 65535:
          return array.astype(np.uint16)
        return array.astype(np.float32)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
    raise ImageReadError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e
  raise ImageReadError(f"{path}: unsupported image mode {mode!r}; expected 1-bit, 8-bit grey, "
                       "palette, RGB(A), 16-bit grey, or 32-bit integer/float grey")


def collect_inputs(specs: Iterable[str]) -> tuple[list[pathlib.Path], list[tuple[str, str]]]:
  """(image files in order, failures [(spec, message)]) of files, folders and glob patterns.

  A folder yields its files with a supported suffix (sorted); a folder without any, a
  pattern matching nothing and a missing path are failures. Duplicates are dropped.
  """
  files: list[pathlib.Path] = []
  failures: list[tuple[str, str]] = []
  for spec in specs:
    path = pathlib.Path(spec)
    if any(c in spec for c in "*?["):
      found = sorted(pathlib.Path(p) for p in glob.glob(spec, recursive=True))
      found = [p for p in found if p.is_file() and p.suffix.lower() in SUFFIXES]
      if not found:
        failures.append((spec, f"{spec}: no image file ({', '.join(SUFFIXES)}) matches"))
    elif path.is_dir():
      found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
      if not found:
        failures.append((spec, f"{path}: the folder holds no image file ({', '.join(SUFFIXES)})"))
    elif path.is_file():
      found = [path]
    else:
      found = []
      failures.append((spec, f"{path}: no such file or folder"))
    files.extend(p for p in found if p not in files)
  return files, failures


def output_names(files: list[pathlib.Path]) -> list[str]:
  """File stems, made unique by appending _2, _3, ... to repeats."""
  names: list[str] = []
  for f in files:
    name, k = f.stem, 1
    while name in names:
      k += 1
      name = f"{f.stem}_{k}"
    names.append(name)
  return names


def load_detector(model: str | pathlib.Path, checkpoint: str = "best",
                  seed_index: Optional[int] = None, backend: str = "jax",
                  **kwargs) -> detector_lib.Detector:
  """A Detector from an exported artifact directory or a training workdir (of a run of
  several seeds: replica `seed_index`, default the best, `export.load_workdir`).

  `backend`: "jax" or "onnxruntime" (an artifact exported with --format=onnx; see
  ``Detector.from_export``).

  Raises:
    FileNotFoundError: `model` is neither (naming what was looked for).
    errors.UserError: `seed_index` given for an artifact (it holds one replica), or out of
      range for the workdir; the onnxruntime backend with a workdir.
    errors.MissingDependencyError: the onnxruntime backend without onnxruntime installed.
  """
  path = pathlib.Path(model)
  if backend == "onnxruntime":
    try:
      import onnxruntime  # noqa: F401  (checked here for a one-line error)
    except ImportError as e:
      raise errors.MissingDependencyError(f"--backend=onnxruntime needs ONNX Runtime ({e}): "
                                          'pip install "irst_jax[onnx]"') from e
  if (path / detector_lib.MANIFEST_FILE).is_file() or path.name == detector_lib.MANIFEST_FILE:
    if seed_index is not None:
      raise errors.UserError(f"--seed_index={seed_index}: {path} is an exported detector, which "
                             "holds one replica; give a training workdir to choose one")
    return detector_lib.Detector.from_export(path, backend=backend, **kwargs)
  if backend != "jax":
    raise errors.UserError(f"--backend={backend} runs an exported artifact; {path} is not one "
                           "(export it with --mode=export --format=onnx)")
  if (path / "config.json").is_file():
    # Imported here: an artifact's detector needs neither Flax nor the models (export's imports).
    from irst_jax.serving import export
    return export.workdir_detector(path, checkpoint, seed_index=seed_index, **kwargs)
  raise FileNotFoundError(f"{path} is neither an exported detector ({detector_lib.MANIFEST_FILE})"
                          " nor a training workdir (config.json)")


@dataclasses.dataclass
class Report:
  """What :func:`run` did: per image {'image', 'height', 'width', 'detections'}, failures,
  and the videos' reports."""

  images: list[dict]
  failures: list[tuple[str, str]]
  videos: list[video_lib.VideoReport] = dataclasses.field(default_factory=list)


#: zlib level of the written PNGs: 1 writes them several times faster than PIL's default 6,
#: for files about a third larger (masks and overlays compress well either way).
PNG_COMPRESS_LEVEL = 1


def _write(out: pathlib.Path, name: str, grey: np.ndarray, prediction: detector_lib.Prediction,
           save_scores: bool) -> None:
  Image.fromarray(prediction.mask.view(np.uint8) * np.uint8(255), "L").save(
      out / "masks" / f"{name}.png", compress_level=PNG_COMPRESS_LEVEL)
  overlay(grey, prediction).save(out / "overlays" / f"{name}.png",
                                 compress_level=PNG_COMPRESS_LEVEL)
  if save_scores:
    np.save(out / "scores" / f"{name}.npy", prediction.score)


def _batch_size(count: int, batch_size: int) -> int:
  """The batch of a canvas with `count` images: at most `batch_size`, as few batches as that
  allows, split evenly so that the last batch needs the fewest dummy images."""
  return -(-count // -(-count // batch_size))


def is_video(spec: str) -> bool:
  """Whether an input is a video file: a path (not a glob) with a video suffix."""
  return (not any(c in spec for c in "*?[")
          and pathlib.Path(spec).suffix.lower() in video_lib.SUFFIXES)


def run(detector: detector_lib.Detector, inputs: Iterable[str], output: str | pathlib.Path, *,
        save_scores: bool = False, batch_size: int = 8, show_progress: bool = True,
        max_canvases: int = canvas_lib.MAX_CANVASES, save_video: bool = False) -> Report:
  """Predicts every image and video of `inputs` (files, folders, globs) and writes the outputs.

  Sizes come from the image headers; `max_canvases` canvases (multiples of the detector's
  pad_multiple) are planned for the images that are not tiled; the images of each canvas are
  decoded and predicted `batch_size` at a time (one compiled program per canvas); then each
  image above the detector's tiling limit is decoded and predicted alone, in tiles. Outputs,
  records and detections.csv rows keep the input order. Inputs named as files with a video
  suffix (:func:`is_video`; folders and globs yield images only) are predicted frame by
  frame (:func:`irst_jax.serving.video.run_video`, with `save_video`) after the images.

  Raises:
    ValueError: batch_size or max_canvases < 1.
    VideoReadError, MissingDependencyError: a video cannot be read; PyAV is missing.
  """
  if batch_size < 1 or max_canvases < 1:
    raise ValueError(f"batch_size and max_canvases must be at least 1, got {batch_size}, "
                     f"{max_canvases}")
  inputs = list(inputs)
  videos = [pathlib.Path(spec) for spec in inputs if is_video(spec)]
  inputs = [spec for spec in inputs if not is_video(spec)]
  if videos:
    video_lib.import_av()   # before any image work: a missing extra is reported at once
  out = pathlib.Path(output)
  for sub in ("masks", "overlays") + (("scores",) if save_scores else ()):
    (out / sub).mkdir(parents=True, exist_ok=True)
  files, failures = collect_inputs(inputs)
  names = output_names(files)
  results: dict[int, dict] = {}
  file_failures: dict[int, str] = {}

  def fail(i: int, error: Exception) -> None:
    path = str(files[i])
    file_failures[i] = str(error) if path in str(error) else f"{path}: {error}"

  sizes: dict[int, tuple[int, int]] = {}
  for i, path in enumerate(files):
    try:
      sizes[i] = read_size(path)
    except ValueError as e:
      fail(i, e)
      continue
    if max(sizes[i]) > detector_lib.MAX_SIDE and detector.tile_size(sizes[i]) is None:
      fail(i, ValueError(f"image of {sizes[i][0]}x{sizes[i][1]} pixels: sides above "
                         f"{detector_lib.MAX_SIDE} are not supported without tiling (--tile)"))
      del sizes[i]
  tiled = [i for i, size in sizes.items() if detector.tile_size(size) is not None]
  whole = {i: size for i, size in sizes.items() if i not in tiled}
  groups: dict[tuple[int, int], list[int]] = {}
  if whole:
    canvases = canvas_lib.plan_canvases(list(whole.values()), detector.pad_multiple, max_canvases)
    for i, size in whole.items():  # input order within each canvas
      groups.setdefault(canvas_lib.assign(size, canvases), []).append(i)

  progress = tqdm(total=len(files), desc="predict", unit="image",
                  disable=not show_progress or not files)
  progress.update(len(files) - len(sizes))

  def read(i: int) -> Optional[np.ndarray]:
    try:
      grey = detector_lib.to_grey(read_image(files[i]), detector.uint16_scaling)
      if grey.shape != sizes[i]:
        raise ImageReadError(f"{files[i]}: decoded size {grey.shape} differs from the "
                             f"header's {sizes[i]}")
      return grey
    except ValueError as e:
      fail(i, e)
      progress.update(1)
      return None

  def write_all(chunk, predictions):
    for (i, grey), prediction in zip(chunk, predictions):
      _write(out, names[i], grey, prediction, save_scores)
    progress.update(len(chunk))

  # One thread writes a batch's files while the next batch is read and predicted; at most
  # one batch waits for its files (memory stays bounded), and write errors are raised here.
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="predict-write") as pool:
    writing: Optional[concurrent.futures.Future] = None
    for shape, indices in sorted(groups.items()):
      batch = _batch_size(len(indices), batch_size)  # constant per canvas: one program
      for start in range(0, len(indices), batch):
        chunk = [(i, grey) for i in indices[start:start + batch]
                 if (grey := read(i)) is not None]
        if not chunk:
          continue
        predictions = detector.predict_batch([grey for _, grey in chunk], canvas=shape,
                                             batch_size=batch)
        for (i, grey), prediction in zip(chunk, predictions):
          results[i] = {"image": str(files[i]), "height": grey.shape[0],
                        "width": grey.shape[1],
                        "detections": [d.as_dict() for d in prediction.detections]}
        if writing is not None:
          writing.result()
        writing = pool.submit(write_all, chunk, predictions)
    if writing is not None:
      writing.result()
  # Tiled frames one at a time, written before the next is read: one frame's maps in memory.
  # The detector converts each tile to grey; a uint8 frame is drawn as it is (its grey).
  for i in tiled:
    try:
      image = read_image(files[i])
      if image.shape[:2] != sizes[i]:
        raise ImageReadError(f"{files[i]}: decoded size {image.shape[:2]} differs from the "
                             f"header's {sizes[i]}")
      prediction = detector.predict_batch([image])[0]
    except ValueError as e:
      fail(i, e)
      progress.update(1)
      continue
    results[i] = {"image": str(files[i]), "height": sizes[i][0], "width": sizes[i][1],
                  "detections": [d.as_dict() for d in prediction.detections]}
    if not save_scores:  # frees the float32 score map before the overlay is drawn
      prediction = dataclasses.replace(prediction, score=None)
    grey = image if image.dtype == np.uint8 else detector_lib.to_grey(
        image, detector.uint16_scaling)
    del image
    write_all([(i, grey)], [prediction])
    del grey, prediction
  progress.close()
  failures = failures + [(str(files[i]), file_failures[i]) for i in sorted(file_failures)]

  video_reports = [
      video_lib.run_video(detector, path, out, name=name, batch_size=batch_size,
                          save_video=save_video, show_progress=show_progress)
      for path, name in zip(videos, output_names(videos))]
  report = Report(images=[results[i] for i in sorted(results)], failures=failures,
                  videos=video_reports)
  with (out / "detections.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for record in report.images:
      for d in record["detections"]:
        writer.writerow({"image": record["image"], **d})
  (out / "detections.json").write_text(json.dumps(
      {"threshold": detector.threshold, "images": report.images,
       "failures": [{"input": s, "error": m} for s, m in failures],
       "videos": [{"video": v.path, "frames": len(v.frames),
                   "detections": sum(len(f["detections"]) for f in v.frames)}
                  for v in report.videos],
       "tta": detector.tta,
       "model": {k: detector.manifest.get(k) for k in ("model", "checkpoint", "normalization")}},
      indent=2))
  return report


def define_flags() -> None:
  """The command's flags; defined only when run as a command, since other irst_jax commands
  (irst_jax.main) define flags of the same names."""
  flags.DEFINE_string("model", None, "Exported artifact directory or training workdir.")
  flags.DEFINE_enum("backend", "jax", list(detector_lib.BACKENDS), "Runtime of an exported "
                    "artifact: its jax.export module, or its model.onnx under ONNX Runtime "
                    "(exported with --format=onnx; pip install \"irst_jax[onnx]\").")
  flags.DEFINE_multi_string("input", None, "Image file, folder or glob (repeatable).")
  flags.DEFINE_string("output", None, "Output directory.")
  flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                    "Checkpoint used when --model is a workdir.")
  flags.DEFINE_integer("seed_index", None, "Replica of a training workdir of train.num_seeds > 1 "
                       "(default: the best IoU in its best_metrics.json).")
  flags.DEFINE_float("threshold", None, "Probability threshold (default: the model's, 0.5).")
  flags.DEFINE_bool("save_scores", False, "Also write scores/<name>.npy.")
  flags.DEFINE_integer("batch_size", 8, "Images per network call (of one padded shape).")
  flags.DEFINE_enum("uint16_scaling", "full_range", list(detector_lib.UINT16_SCALINGS),
                    "How 16-bit images map to the 0..255 training scale.")
  flags.DEFINE_integer("tile", None,
                       "Tile side (a multiple of 32): frames with a side above it are run in "
                       "tiles and stitched. Default: frames of more than 2048x2048 pixels in "
                       "tiles of 1024; 0: never tile.")
  flags.DEFINE_integer("overlap", None, "Overlap of neighbouring tiles (a multiple of 32, "
                       "below --tile; default --tile / 8).")
  flags.DEFINE_integer("tile_batch", detector_lib.DEFAULT_TILE_BATCH, "Tiles per network call.")
  flags.DEFINE_enum("tta", "none", list(detector_lib.TTA_MODES),
                    "Test-time augmentation: average the sigmoid probabilities over the 4 "
                    "flips, or the 8 flips and transposes.")
  flags.DEFINE_bool("save_video", False, "For video inputs: also write the annotated video.")
  flags.mark_flags_as_required(["model", "input", "output"])


def main(argv) -> Optional[int]:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compilation_cache.enable()
  f = flags.FLAGS
  detector = load_detector(f.model, f.checkpoint, seed_index=f.seed_index, backend=f.backend,
                           threshold=f.threshold,
                           uint16_scaling=f.uint16_scaling, tta=f.tta, tile=f.tile,
                           overlap=f.overlap, tile_batch=f.tile_batch)
  report = run(detector, f.input, f.output, save_scores=f.save_scores, batch_size=f.batch_size,
               save_video=f.save_video)
  count = sum(len(r["detections"]) for r in report.images)
  print(f"{len(report.images)} image(s), {count} detection(s) -> {f.output}")
  for v in report.videos:
    count = sum(len(frame["detections"]) for frame in v.frames)
    print(f"{v.path}: {len(v.frames)} frame(s), {count} detection(s)")
  if report.failures:
    print(f"{len(report.failures)} input(s) failed:")
    for _, message in report.failures:
      print(f"  {message}")
    return 1
  return None


if __name__ == "__main__":
  platform_settings.apply()   # XLA CPU flags, on CPU only, before JAX starts
  define_flags()
  errors.run_main(main)
