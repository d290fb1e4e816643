"""irst_jax.serving.predict: file formats, outputs agreeing with the Detector, failures named."""
import csv
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from irst_jax.data import canvas
from irst_jax.serving import detector as detector_lib
from irst_jax.serving import predict
from tests.test_export import SIZES, exported_detector, shared

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def detector(tmp_path_factory, prepared_fake_nuaa):
  return exported_detector(tmp_path_factory, prepared_fake_nuaa)


def _write_inputs(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """Images in every supported format, of two sizes; returns {file name: expected grey array
  as read (uint8 / uint16)}."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(5)
  _, h, w = SIZES[0]
  grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
  rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  x16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
  _, h2, w2 = SIZES[1]
  other = rng.integers(0, 256, (h2, w2), dtype=np.uint8)
  Image.fromarray(grey, "L").save(folder / "a_grey.png")
  Image.fromarray(rgb, "RGB").save(folder / "b_rgb.png")
  Image.fromarray(x16).save(folder / "c_16bit.png")
  Image.fromarray(x16).save(folder / "d_16bit.tif")
  Image.fromarray(rgb, "RGB").save(folder / "e_rgb.bmp")
  Image.fromarray(grey, "L").save(folder / "f_grey.jpg", quality=95)
  Image.fromarray(other, "L").save(folder / "g_other_size.tiff")
  (folder / "notes.txt").write_text("not an image")  # ignored: not an image suffix
  jpeg = np.asarray(Image.open(folder / "f_grey.jpg"))
  rgb_grey = np.asarray(Image.fromarray(rgb).convert("L"))
  return {"a_grey.png": grey, "b_rgb.png": rgb_grey, "c_16bit.png": x16, "d_16bit.tif": x16,
          "e_rgb.bmp": rgb_grey, "f_grey.jpg": jpeg, "g_other_size.tiff": other}


def test_predict_formats_outputs_and_failures(detector, tmp_path):
  expected = _write_inputs(tmp_path / "in")
  bad = tmp_path / "bad"
  bad.mkdir()
  data = (tmp_path / "in" / "a_grey.png").read_bytes()
  (bad / "truncated.png").write_bytes(data[: len(data) // 2])
  Image.fromarray(np.zeros((8, 8, 4), np.uint8), "CMYK").save(bad / "cmyk.jpg")
  (tmp_path / "empty").mkdir()
  inputs = [str(tmp_path / "in"), str(bad / "*.*"), str(tmp_path / "empty"),
            str(tmp_path / "missing.png")]
  report = predict.run(detector, inputs, tmp_path / "out", save_scores=True, batch_size=2,
                       show_progress=False)

  assert [pathlib.Path(r["image"]).name for r in report.images] == sorted(expected)
  messages = dict(report.failures)
  assert set(messages) == {str(bad / "cmyk.jpg"), str(bad / "truncated.png"),
                           str(tmp_path / "empty"), str(tmp_path / "missing.png")}
  assert "unsupported image mode 'CMYK'" in messages[str(bad / "cmyk.jpg")]
  assert "truncated.png: cannot read the image" in messages[str(bad / "truncated.png")]
  assert "holds no image file" in messages[str(tmp_path / "empty")]
  assert "no such file or folder" in messages[str(tmp_path / "missing.png")]

  out = tmp_path / "out"
  rows = list(csv.DictReader((out / "detections.csv").open()))
  saved = json.loads((out / "detections.json").read_text())
  assert len(saved["failures"]) == 4 and saved["threshold"] == 0.5
  for record in saved["images"]:
    name = pathlib.Path(record["image"]).name
    stem = pathlib.Path(name).stem
    image = expected[name]  # the same pixels through the Python API, batched like SIZES
    result = detector.predict_batch([image] * (2 if image.shape == SIZES[0][1:] else 1))[0]
    mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
    np.testing.assert_array_equal(mask, result.mask.astype(np.uint8) * 255)
    np.testing.assert_allclose(np.load(out / "scores" / f"{stem}.npy"), result.score, atol=1e-6)
    assert Image.open(out / "overlays" / f"{stem}.png").size == mask.shape[::-1]
    assert record["detections"] == [d.as_dict() for d in result.detections]
    mine = [r for r in rows if r["image"] == record["image"]]
    assert [int(r["target_id"]) for r in mine] == [d.target_id for d in result.detections]
    assert [int(r["area"]) for r in mine] == [d.area for d in result.detections]
    assert (record["height"], record["width"]) == image.shape


_LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"


def test_many_sizes_compile_at_most_four_programs(tmp_path_factory, prepared_fake_nuaa, tmp_path):
  _, artifact, _, _ = shared(tmp_path_factory, prepared_fake_nuaa)
  sizes = [(20, 45), (17, 30), (33, 64), (40, 20), (70, 33), (10, 90), (64, 64), (50, 50),
           (20, 45), (96, 96), (60, 40)]
  assert len(set(sizes)) == 10
  rng = np.random.default_rng(9)
  images = [rng.integers(0, 256, size, dtype=np.uint8) for size in sizes]
  (tmp_path / "in").mkdir()
  for k, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / "in" / f"{k:02d}.png")
  fresh = detector_lib.Detector.from_export(artifact)   # an empty jit cache
  shapes = []

  def recording(batch, batch_sizes, threshold):
    shapes.append(batch.shape)
    return fresh.forward(batch, batch_sizes, threshold)

  detector = detector_lib.Detector(recording, fresh.manifest, threshold=0.45)
  lowerings = []

  def listener(event, duration, **kwargs):
    if event == _LOWERING:
      lowerings.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    report = predict.run(detector, [str(tmp_path / "in")], tmp_path / "out", batch_size=3,
                         show_progress=False)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  planned = canvas.plan_canvases(sizes, 32)
  assert planned == [(32, 64), (32, 96), (64, 64), (96, 96)]
  groups = {c: [s for s in sizes if canvas.assign(s, planned) == c] for c in planned}
  assert [len(groups[c]) for c in planned] == [3, 1, 5, 2]
  # one program a canvas: batches of at most 3, split evenly (5 images: 3 + 2 and a dummy)
  assert shapes == [(3, 32, 64, 1), (1, 32, 96, 1), (3, 64, 64, 1), (3, 64, 64, 1),
                    (2, 96, 96, 1)]
  assert len(lowerings) == 4
  # each image's outputs are those of the image alone on its canvas (same program)
  rows = list(csv.DictReader((tmp_path / "out" / "detections.csv").open()))
  assert [r["image"] for r in report.images] == [str(tmp_path / "in" / f"{k:02d}.png")
                                                 for k in range(len(sizes))]
  expected_rows = []
  for k, (image, record) in enumerate(zip(images, report.images)):
    c = canvas.assign(image.shape, planned)
    batch = {(32, 64): 3, (32, 96): 1, (64, 64): 3, (96, 96): 2}[c]
    alone = detector.predict_batch([image], canvas=c, batch_size=batch)[0]
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{k:02d}.png"))
    np.testing.assert_array_equal(mask, alone.mask.astype(np.uint8) * 255)
    assert record["detections"] == [d.as_dict() for d in alone.detections]
    expected_rows += [(record["image"], str(d.target_id)) for d in alone.detections]
  assert len({image for image, _ in expected_rows}) >= 3   # the threshold gives detections
  assert [(r["image"], r["target_id"]) for r in rows] == expected_rows   # input order


def test_oversized_and_unreadable_headers_are_failures(detector, tmp_path):
  (tmp_path / "in").mkdir()
  Image.fromarray(np.zeros((1, 16385), np.uint8)).save(tmp_path / "in" / "wide.png")
  (tmp_path / "in" / "junk.png").write_bytes(b"not a png")
  untiled = detector_lib.Detector(detector.forward, detector.manifest, tile=0)
  report = predict.run(untiled, [str(tmp_path / "in")], tmp_path / "out", show_progress=False)
  assert report.images == [] and report.failures == [
      (str(tmp_path / "in" / "junk.png"),
       f"{tmp_path / 'in' / 'junk.png'}: cannot read the image (UnidentifiedImageError: "
       f"cannot identify image file '{tmp_path / 'in' / 'junk.png'}')"),
      (str(tmp_path / "in" / "wide.png"),
       f"{tmp_path / 'in' / 'wide.png'}: image of 1x16385 pixels: sides above 16384 are not "
       "supported without tiling (--tile)")]


def test_batch_sizes_split_evenly():
  # (images of a canvas, --batch_size) -> the canvas's batch: fewest batches, fewest dummies
  cases = {(1, 8): 1, (5, 8): 5, (8, 8): 8, (9, 8): 5, (10, 8): 5, (17, 8): 6, (31, 8): 8,
           (116, 8): 8, (57, 8): 8, (7, 1): 1}
  assert {k: predict._batch_size(*k) for k in cases} == cases


def test_read_image_modes(tmp_path):
  x16 = np.array([[0, 300, 65535]], np.uint16)
  Image.fromarray(x16).save(tmp_path / "x.png")
  np.testing.assert_array_equal(predict.read_image(tmp_path / "x.png"), x16)
  Image.fromarray(np.array([[0, 7, 70000]], np.int32), "I").save(tmp_path / "wide.tif")
  assert predict.read_image(tmp_path / "wide.tif").dtype == np.float32
  Image.fromarray(np.array([[0, 1], [1, 0]], bool)).save(tmp_path / "bits.png")
  np.testing.assert_array_equal(predict.read_image(tmp_path / "bits.png"), [[0, 255], [255, 0]])
  assert predict.output_names([pathlib.Path("a/x.png"), pathlib.Path("b/x.png")]) == ["x", "x_2"]


def test_predict_command(tmp_path_factory, prepared_fake_nuaa, tmp_path):
  _, artifact, _, _ = shared(tmp_path_factory, prepared_fake_nuaa)
  _, h, w = SIZES[1]
  (tmp_path / "in").mkdir()
  Image.fromarray(np.full((h, w), 90, np.uint8)).save(tmp_path / "in" / "frame.png")
  (tmp_path / "in" / "broken.bmp").write_bytes(b"BM not really")
  command = [sys.executable, "-m", "irst_jax.serving.predict", f"--model={artifact}",
             f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}"]
  out = subprocess.run(command, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-3000:]
  assert "1 image(s)" in out.stdout and "1 input(s) failed" in out.stdout
  assert f"{tmp_path / 'in' / 'broken.bmp'}: cannot read the image" in out.stdout
  assert (tmp_path / "out" / "masks" / "frame.png").exists()
  assert (tmp_path / "out" / "overlays" / "frame.png").exists()
