"""Run a detector on video files: detections per frame, an annotated video.

    python -m irst_jax.predict --model=runs/acm_unet/export --input=clip.mp4 --output=out/ \
        [--save_video] [--batch_size=8] [--tta=flips] [--tile=512 --overlap=64]

Frames are decoded with PyAV (FFmpeg's decoders: MP4, MKV, AVI, MOV, WebM, MPEG-TS, ... any
container and codec FFmpeg reads; the optional extra ``pip install 'irst_jax[video]'``),
converted to grey like the image files (grey and 16-bit grey streams as such, colour frames
with the ITU-R 601-2 luma of :func:`irst_jax.serving.detector.to_grey`) and predicted
`batch_size` frames a network call (all frames of a stream share one canvas: one compiled
program; frames above the tiling limit are tiled, see :mod:`irst_jax.serving.detector`).
Only one batch of frames is held at a time.

Written into the output folder, for a video ``<name>.<ext>``:
  videos/<name>.csv    one row a detection: frame (0-based decoding order), time (seconds,
                       the frame's presentation time stamp; frame / fps when the stream has
                       none), target_id, x, y (centroid, pixels), area (pixels), x_min, y_min,
                       x_max, y_max (inclusive), peak_score, mean_score
  videos/<name>.json   the stream (path, fps, size, frames) and per frame: frame, time,
                       detections
  videos/<name>.mp4    with save_video: the annotated frames (the overlays of
                       :func:`irst_jax.serving.draw.overlay`), H.264 (MPEG-4 part 2
                       when the FFmpeg build has no H.264 encoder) at the input's frame rate
"""
from __future__ import annotations

import csv
import dataclasses
import fractions
import json
import pathlib
from typing import Any, Iterator, Optional

import numpy as np
from tqdm import tqdm

from irst_jax import errors
from irst_jax.serving import detector as detector_lib
from irst_jax.serving import draw

#: File suffixes routed to the video reader by ``predict`` (any container FFmpeg reads can
#: also be given to :func:`run_video` directly).
SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv",
            ".flv", ".gif")
CSV_FIELDS = ("frame", "time", "target_id", "x", "y", "area", "x_min", "y_min", "x_max",
              "y_max", "peak_score", "mean_score")


class VideoReadError(errors.UserError):
  """A video file that cannot be opened or decoded, or has no video stream."""


def import_av():
  """The PyAV module.

  Raises:
    MissingDependencyError: PyAV is not installed (naming the extra).
  """
  try:
    import av  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise errors.MissingDependencyError(
        "reading video needs PyAV: pip install 'irst_jax[video]' (or pip install av)") from e
  return av


def frame_array(frame) -> np.ndarray:
  """A decoded ``av.VideoFrame`` as an array for :func:`detector_lib.to_grey`: uint16 [H, W]
  for 16-bit grey streams, uint8 [H, W] for grey ones, uint8 RGB [H, W, 3] otherwise."""
  name = frame.format.name
  if name.startswith(("gray16", "gray12", "gray10")):
    return frame.to_ndarray(format="gray16le")
  if name.startswith("gray"):
    return frame.to_ndarray(format="gray")
  return frame.to_ndarray(format="rgb24")


@dataclasses.dataclass
class VideoReport:
  """What :func:`run_video` did: stream facts and per frame {'frame', 'time', 'detections'}."""

  path: str
  fps: Optional[float]
  width: int
  height: int
  frames: list[dict]


def _frames(container, stream, path: pathlib.Path) -> Iterator[tuple[int, float, Any]]:
  """(index, time in seconds, av.VideoFrame) of the stream in decoding order."""
  rate = stream.average_rate or stream.guessed_rate
  try:
    for index, frame in enumerate(container.decode(stream)):
      time = frame.time if frame.time is not None else (
          index / float(rate) if rate else float("nan"))
      yield index, float(time), frame
  except Exception as e:  # av.error.FFmpegError and its subclasses
    raise VideoReadError(f"{path}: cannot decode the video ({type(e).__name__}: {e})") from e


class _Writer:
  """Encodes RGB frames [H, W, 3] uint8 into a video file (H.264 or MPEG-4 part 2)."""

  def __init__(self, av, path: pathlib.Path, rate, width: int, height: int):
    self.container = av.open(str(path), "w")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    self.stream = self.container.add_stream(codec, rate=rate)
    # yuv420p needs even sides: odd frames get one black column / row
    self.width, self.height = width + width % 2, height + height % 2
    self.stream.width, self.stream.height = self.width, self.height
    self.stream.pix_fmt = "yuv420p"
    self.av = av

  def write(self, rgb: np.ndarray) -> None:
    if rgb.shape[:2] != (self.height, self.width):
      padded = np.zeros((self.height, self.width, 3), np.uint8)
      padded[:rgb.shape[0], :rgb.shape[1]] = rgb
      rgb = padded
    frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    for packet in self.stream.encode(frame):
      self.container.mux(packet)

  def close(self) -> None:
    for packet in self.stream.encode():
      self.container.mux(packet)
    self.container.close()


def run_video(detector: detector_lib.Detector, path: str | pathlib.Path,
              output: str | pathlib.Path, *, name: Optional[str] = None, batch_size: int = 8,
              save_video: bool = False, show_progress: bool = True) -> VideoReport:
  """Predicts every frame of a video and writes videos/<name>.{csv,json[,mp4]} (module
  docstring) into `output`.

  Args:
    detector: the detector (its threshold, TTA and tiling apply to every frame).
    path: the video file.
    output: the output folder (videos/ is created in it).
    name: stem of the written files (default: the video's stem).
    batch_size: frames a network call (the last batch is completed with dummy frames).
    save_video: also write the annotated video.
    show_progress: a tqdm progress bar of the frames.

  Raises:
    MissingDependencyError: PyAV is not installed.
    VideoReadError: naming the file: it cannot be opened, has no video stream, or a frame
      cannot be decoded (the files written so far are kept).
    ValueError: batch_size < 1.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be at least 1, got {batch_size}")
  av = import_av()
  path = pathlib.Path(path)
  if not path.is_file():
    raise VideoReadError(f"{path}: no such video file")
  try:
    container = av.open(str(path))
  except Exception as e:  # av.error.FFmpegError (InvalidDataError, ...), OSError
    raise VideoReadError(f"{path}: cannot open the video ({type(e).__name__}: {e})") from e
  out = pathlib.Path(output) / "videos"
  out.mkdir(parents=True, exist_ok=True)
  name = name or path.stem
  writer: Optional[_Writer] = None
  try:
    if not container.streams.video:
      raise VideoReadError(f"{path}: the file holds no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate
    report = VideoReport(path=str(path), fps=float(rate) if rate else None,
                         width=int(stream.codec_context.width),
                         height=int(stream.codec_context.height), frames=[])
    if save_video:
      writer = _Writer(av, out / f"{name}.mp4", rate or fractions.Fraction(25),
                       report.width, report.height)
    total = stream.frames or None
    progress = tqdm(total=total, desc=f"predict {path.name}", unit="frame",
                    disable=not show_progress)
    with (out / f"{name}.csv").open("w", newline="") as f:
      rows = csv.DictWriter(f, fieldnames=CSV_FIELDS)
      rows.writeheader()

      def flush(batch: list[tuple[int, float, np.ndarray]]) -> None:
        grey = [g for _, _, g in batch]
        m = detector.pad_multiple
        canvas = (max(-(-g.shape[0] // m) * m for g in grey),
                  max(-(-g.shape[1] // m) * m for g in grey))
        predictions = detector.predict_batch(grey, canvas=canvas, batch_size=batch_size)
        for (index, time, g), prediction in zip(batch, predictions):
          detections = [d.as_dict() for d in prediction.detections]
          report.frames.append({"frame": index, "time": time, "detections": detections})
          for d in detections:
            rows.writerow({"frame": index, "time": time, **d})
          if writer is not None:
            writer.write(np.asarray(draw.overlay(g, prediction)))
        progress.update(len(batch))

      batch: list[tuple[int, float, np.ndarray]] = []
      for index, time, frame in _frames(container, stream, path):
        batch.append((index, time, detector_lib.to_grey(frame_array(frame),
                                                        detector.uint16_scaling)))
        if len(batch) == batch_size:
          flush(batch)
          batch = []
      if batch:
        flush(batch)
    progress.close()
    if not report.frames:
      raise VideoReadError(f"{path}: the video stream holds no frame")
  finally:
    container.close()
    if writer is not None:
      writer.close()
  (out / f"{name}.json").write_text(json.dumps(
      {"video": report.path, "fps": report.fps, "width": report.width, "height": report.height,
       "frame_count": len(report.frames), "threshold": detector.threshold, "tta": detector.tta,
       "frames": report.frames}, indent=2))
  return report
