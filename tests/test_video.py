"""predict on video files (PyAV, the extra irst_jax[video]): detections per frame, annotated video,
errors. The clip is written by the test: a bright square moving right on a dark 64 x 64 frame."""
from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from irst_jax.serving import predict
from irst_jax.serving import video as video_lib
from irst_jax.serving.detector import Detector
from tests.test_deploy import MANIFEST, _local_forward

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

ROOT = pathlib.Path(__file__).resolve().parents[1]
FPS = 10
FRAMES = 7


def _write_clip(path: pathlib.Path, frames: int = FRAMES) -> list[tuple[float, float]]:
  """A 64 x 64 clip at FPS frames/s: a 6 x 6 square of 255 at row 20, column 8 + 5 k in frame
  k (MPEG-4 part 2, near-lossless); returns the squares' centres (x, y)."""
  container = av.open(str(path), "w")
  stream = container.add_stream("mpeg4", rate=FPS)
  stream.width = stream.height = 64
  stream.pix_fmt = "yuv420p"
  stream.options = {"qscale": "1"}
  centres = []
  for k in range(frames):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[20:26, 8 + 5 * k:14 + 5 * k] = 255
    centres.append((8 + 5 * k + 2.5, 22.5))
    for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
      container.mux(packet)
  for packet in stream.encode():
    container.mux(packet)
  container.close()
  return centres


@pytest.fixture(scope="module")
def box_detector():
  """A local box filter network: a bright square on a dark frame is one detection."""
  ones = [np.full((3, 3, 1, 4), 0.1, np.float32), np.full((3, 3, 4, 4), 0.1, np.float32),
          np.full((3, 3, 4, 1), 0.1, np.float32)]
  return Detector(_local_forward(ones), dict(MANIFEST, model={"name": "box"}))


def test_video_detections_per_frame(box_detector, tmp_path):
  clip = tmp_path / "clip.mp4"
  centres = _write_clip(clip)
  report = video_lib.run_video(box_detector, clip, tmp_path / "out", batch_size=3,
                               save_video=True, show_progress=False)
  assert (report.fps, report.width, report.height) == (FPS, 64, 64)
  assert [f["frame"] for f in report.frames] == list(range(FRAMES))
  np.testing.assert_allclose([f["time"] for f in report.frames], np.arange(FRAMES) / FPS)
  for frame, (x, y) in zip(report.frames, centres):
    (d,) = frame["detections"]   # one target a frame, where the square is
    assert abs(d["x"] - x) < 1.0 and abs(d["y"] - y) < 1.0
    assert d["x_min"] <= x - 3 and d["x_max"] >= x + 3 and d["peak_score"] > 0.5
  # the same as predicting the decoded frames one by one
  with av.open(str(clip)) as container:
    decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  for frame, image in zip(report.frames, decoded):
    expected = [d.as_dict() for d in box_detector(image).detections]
    assert [(d["x"], d["y"], d["area"]) for d in frame["detections"]] == [
        (d["x"], d["y"], d["area"]) for d in expected]
  # CSV rows = JSON detections; the annotated clip has every frame
  with (tmp_path / "out" / "videos" / "clip.csv").open() as f:
    rows = list(csv.DictReader(f))
  assert [int(r["frame"]) for r in rows] == list(range(FRAMES))
  assert [float(r["time"]) for r in rows] == pytest.approx(list(np.arange(FRAMES) / FPS))
  assert float(rows[2]["x"]) == report.frames[2]["detections"][0]["x"]
  saved = json.loads((tmp_path / "out" / "videos" / "clip.json").read_text())
  assert saved["frame_count"] == FRAMES and saved["frames"][3] == report.frames[3]
  with av.open(str(tmp_path / "out" / "videos" / "clip.mp4")) as container:
    annotated = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  assert len(annotated) == FRAMES and annotated[0].shape == (64, 64, 3)
  # the mask is tinted red: red above green where the square is
  frame = annotated[1].astype(int)
  assert frame[23, 15, 0] - frame[23, 15, 1] > 60


def test_unreadable_video(box_detector, tmp_path):
  bad = tmp_path / "broken.mp4"
  bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
  with pytest.raises(video_lib.VideoReadError, match=r"broken.mp4: cannot (open|decode)"):
    video_lib.run_video(box_detector, bad, tmp_path / "out", show_progress=False)
  with pytest.raises(video_lib.VideoReadError, match="no such video file"):
    predict.run(box_detector, [str(tmp_path / "missing.avi")], tmp_path / "out",
                show_progress=False)


def test_missing_extra_is_named(monkeypatch, box_detector, tmp_path):
  monkeypatch.setitem(sys.modules, "av", None)   # import av raises ImportError
  with pytest.raises(video_lib.errors.MissingDependencyError, match=r"irst_jax\[video\]"):
    predict.run(box_detector, [str(tmp_path / "clip.mp4")], tmp_path / "out")


def test_predict_command_on_a_video(tmp_path_factory, prepared_fake_nuaa, tmp_path):
  from tests.test_export import shared  # the tiny exported ACM-U-Net of the export tests
  _, artifact, _, _ = shared(tmp_path_factory, prepared_fake_nuaa)
  clip = tmp_path / "clip.mp4"
  _write_clip(clip, frames=3)
  command = [sys.executable, "-m", "irst_jax.predict", f"--model={artifact}",
             f"--input={clip}", f"--output={tmp_path / 'out'}", "--save_video", "--tta=flips",
             "--batch_size=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"{clip}: 3 frame(s)" in done.stdout
  saved = json.loads((tmp_path / "out" / "videos" / "clip.json").read_text())
  assert [f["frame"] for f in saved["frames"]] == [0, 1, 2] and saved["tta"] == "flips"
  assert (tmp_path / "out" / "videos" / "clip.mp4").stat().st_size > 0
  # an unreadable stream: one line, exit status 2
  bad = tmp_path / "bad.mkv"
  bad.write_bytes(b"not a video at all")
  command[4] = f"--input={bad}"
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 2
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {bad}: cannot open the video (InvalidDataError")
  assert "Traceback" not in done.stderr
