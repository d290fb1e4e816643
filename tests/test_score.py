"""irst_jax.evaluation.score: scoring a folder of PNG predictions on a (fake) dataset split."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import default
from irst_jax.evaluation import metrics, score
from tests.conftest import FAKE_SPLITS

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPS = np.spacing(1)


def _masks(raw: pathlib.Path, names):
  return {n: np.asarray(Image.open(raw / "masks" / f"{n}_pixels0.png")) > 0 for n in names}


def _write(folder: pathlib.Path, arrays: dict, mode="L"):
  folder.mkdir(parents=True, exist_ok=True)
  for name, a in arrays.items():
    Image.fromarray(a.astype(np.uint8), "L").convert(mode).save(folder / f"{name}.png")


def _score(folder, prepared):
  raw, data_dir = prepared
  cfg = score.dataset_config("nuaa_sirst", "50_50", str(data_dir), str(raw))
  return score.score_folder(folder, cfg, "test", default.get_base_config().eval, batch_size=4)


def test_perfect_and_shifted_predictions(prepared_fake_nuaa, tmp_path):
  raw, _ = prepared_fake_nuaa
  names = FAKE_SPLITS["50_50"]["test"]
  masks = _masks(raw, names)
  _write(tmp_path / "perfect", {n: m * 255 for n, m in masks.items()})
  values, _ = _score(tmp_path / "perfect", prepared_fake_nuaa)
  assert values["images"] == len(names)
  for key in ("IoU", "nIoU", "Pd", "AUC", "AP", "F-measure", "F-area"):
    assert values[key] == pytest.approx(1.0, abs=1e-9), key
  assert values["Fa"] == 0.0

  # 0/1 PNGs (read as binary) shifted right by one pixel, plus a false alarm in image 0.
  shifted = {n: np.roll(m, 1, axis=1) for n, m in masks.items()}
  shifted[names[0]][0, 0] = True
  _write(tmp_path / "shifted", shifted)
  values, _ = _score(tmp_path / "shifted", prepared_fake_nuaa)
  inter = sum((shifted[n] & masks[n]).sum() for n in names)
  union = sum((shifted[n] | masks[n]).sum() for n in names)
  pred = sum(shifted[n].sum() for n in names)
  assert values["IoU"] == pytest.approx(inter / (EPS + union), rel=1e-12)
  assert values["nIoU"] == pytest.approx(np.mean([
      (shifted[n] & masks[n]).sum() / (EPS + (shifted[n] | masks[n]).sum()) for n in names]))
  assert values["F-measure"] == pytest.approx(float(metrics.f_measure(
      inter, pred - inter, union - pred)), rel=1e-12)
  pixels = sum(m.size for m in masks.values())
  assert values["Fa"] >= 1 / pixels and values["Pd"] == 1.0


def test_bad_folders_are_named(prepared_fake_nuaa, tmp_path):
  raw, _ = prepared_fake_nuaa
  names = FAKE_SPLITS["50_50"]["test"]
  masks = _masks(raw, names)
  _write(tmp_path / "missing", {n: masks[n] * 255 for n in names[1:]})
  with pytest.raises(ValueError, match=rf"1 prediction\(s\) missing, e.g. {names[0]}.png"):
    _score(tmp_path / "missing", prepared_fake_nuaa)
  _write(tmp_path / "extra", {**{n: masks[n] * 255 for n in names}, "Misc_999": masks[names[0]]})
  with pytest.raises(ValueError, match=r"not in the split, e.g. Misc_999.png"):
    _score(tmp_path / "extra", prepared_fake_nuaa)
  wrong = {n: masks[n] * 255 for n in names}
  wrong[names[2]] = np.pad(wrong[names[2]], ((0, 0), (0, 3)))
  h, w = masks[names[2]].shape
  _write(tmp_path / "wrong", wrong)
  with pytest.raises(ValueError, match=rf"{names[2]}.png is {w + 3}x{h}, image is {w}x{h}"):
    _score(tmp_path / "wrong", prepared_fake_nuaa)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    _score(tmp_path / "nowhere", prepared_fake_nuaa)


def test_command_prints_table(prepared_fake_nuaa, tmp_path):
  raw, data_dir = prepared_fake_nuaa
  names = FAKE_SPLITS["50_50"]["test"]
  _write(tmp_path / "pred", {n: m * 255 for n, m in _masks(raw, names).items()}, mode="RGB")
  out = subprocess.run(
      [sys.executable, "-m", "irst_jax.evaluation.score", f"--predictions={tmp_path / 'pred'}",
       "--dataset=nuaa_sirst", "--split=test", f"--data_dir={data_dir}", f"--manual_dir={raw}",
       f"--out_dir={tmp_path / 'report'}", "--protocol=basicirstd_2023"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| pred | 1.0000 | 1.0000 | 1.0000 | 0.00 | 1.0000 | 1.0000 | 1.0000 | 1.0000 |" in out.stdout
  assert "images, protocol basicirstd_2023" in out.stdout
  assert json.loads((tmp_path / "report" / "metrics.json").read_text())["protocol"] == \
      "basicirstd_2023"
  assert (tmp_path / "report" / "roc.png").exists() and (tmp_path / "report" / "pr.png").exists()


def _png_16_bit_rgb(path: pathlib.Path, h: int, w: int):
  """A 16-bit RGB PNG written byte by byte (PIL reads it as 8-bit "RGB", dropping bits)."""
  import struct
  import zlib

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  rows = b"".join(b"\x00" + bytes(6 * w) for _ in range(h))
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_score_maps_are_read_at_their_own_range(prepared_fake_nuaa, tmp_path):
  """The same scores written as 8-bit and 16-bit PNGs give the same metrics, equal to the
  hand count; read through convert('L'), the 16-bit maps were all 255 (every pixel a target)."""
  raw, _ = prepared_fake_nuaa
  names = FAKE_SPLITS["50_50"]["test"]
  masks = _masks(raw, names)
  predicted = {n: np.roll(m, 1, axis=1) for n, m in masks.items()}   # shifted right by 1 px
  predicted[names[0]][0, 0] = True                                   # and one false alarm
  # 128 / 255 = 0.50196 > 0.5 on the predicted pixels, 127 / 255 = 0.49804 elsewhere; the same
  # scores in 16 bits are 257 x those values (128 * 257 / 65535 == 128 / 255).
  levels = {n: np.where(p, 128, 127) for n, p in predicted.items()}
  _write(tmp_path / "eight", levels)
  (tmp_path / "sixteen").mkdir()
  (tmp_path / "boundary").mkdir()
  for n, v in levels.items():
    Image.fromarray((v * 257).astype(np.uint16)).save(tmp_path / "sixteen" / f"{n}.png")
    # the 16-bit levels either side of 0.5: 32768 / 65535 > 0.5 > 32767 / 65535
    Image.fromarray(np.where(predicted[n], 32768, 32767).astype(np.uint16)).save(
        tmp_path / "boundary" / f"{n}.png")
  assert Image.open(tmp_path / "sixteen" / f"{names[0]}.png").mode == "I;16"
  eight, _ = _score(tmp_path / "eight", prepared_fake_nuaa)
  sixteen, _ = _score(tmp_path / "sixteen", prepared_fake_nuaa)
  boundary, _ = _score(tmp_path / "boundary", prepared_fake_nuaa)
  assert sixteen == eight
  inter = sum((predicted[n] & masks[n]).sum() for n in names)
  union = sum((predicted[n] | masks[n]).sum() for n in names)
  for values in (eight, boundary):
    assert values["IoU"] == pytest.approx(inter / (EPS + union), rel=1e-12)
    assert values["nIoU"] == pytest.approx(np.mean([
        (predicted[n] & masks[n]).sum() / (EPS + (predicted[n] | masks[n]).sum()) for n in names]))
    assert values["Pd"] == 1.0
  assert 0.1 < eight["IoU"] < 0.9   # a real overlap, neither perfect nor all-255 (~0.003)


def test_bilevel_and_8_bit_masks_in_one_folder(prepared_fake_nuaa, tmp_path):
  """Mode "1" masks (0/1) beside 0/255 masks: each is read at its own depth (perfect scores)."""
  raw, _ = prepared_fake_nuaa
  names = FAKE_SPLITS["50_50"]["test"]
  masks = _masks(raw, names)
  _write(tmp_path / "mixed", {n: masks[n] * 255 for n in names[:3]}, mode="1")
  _write(tmp_path / "mixed", {n: masks[n] * 255 for n in names[3:]})
  values, _ = _score(tmp_path / "mixed", prepared_fake_nuaa)
  assert values["IoU"] == pytest.approx(1.0, abs=1e-9) and values["Fa"] == 0.0


def test_read_score_map_depths_and_refusals(tmp_path):
  values = np.array([[0, 1, 32768, 65535]], np.uint16)
  Image.fromarray(values).save(tmp_path / "sixteen.png")
  array, scale = score.read_score_map(tmp_path / "sixteen.png")
  assert scale == 65535.0 and array.tolist() == [[0, 1, 32768, 65535]]
  Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "int32.tif")
  (tmp_path / "int32.tif").rename(tmp_path / "int32.png")   # PIL reads by content: mode "I"
  with pytest.raises(ValueError, match=r"int32\.png holds 32-bit integer values 0\.\.70000; "
                     r"expected a 16-bit score map \(0\.\.65535\)"):
    score.read_score_map(tmp_path / "int32.png")
  Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32)).save(tmp_path / "float.tif")
  array, scale = score.read_score_map(tmp_path / "float.tif")
  assert scale == 1.0 and array.tolist() == [[0.0, 0.25, 1.0]]
  Image.fromarray(np.array([[0.0, 2.5]], np.float32)).save(tmp_path / "float2.tif")
  with pytest.raises(ValueError, match=r"float2\.tif holds float values 0\.\.2\.5; expected "
                     r"scores in \[0, 1\]"):
    score.read_score_map(tmp_path / "float2.tif")
  _png_16_bit_rgb(tmp_path / "rgb16.png", 2, 3)
  with pytest.raises(ValueError, match=r"rgb16\.png is a 16-bit colour image"):
    score.read_score_map(tmp_path / "rgb16.png")
  Image.new("CMYK", (3, 2)).save(tmp_path / "cmyk.jpg")
  with pytest.raises(ValueError, match=r"cmyk\.jpg has image mode 'CMYK'; expected a binary mask"):
    score.read_score_map(tmp_path / "cmyk.jpg")
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  with pytest.raises(ValueError, match=r"cannot read .*broken\.png"):
    score.read_score_map(tmp_path / "broken.png")


def test_protocols_score_as_their_reference_codes(prepared_fake_nuaa, tmp_path):
  """The same score maps under the three protocols. basicirstd_2023: the old BasicIRSTD PD_FA
  (numpy copy) at the original size; dnanet: predictions resized with PIL BILINEAR (float) and
  masks with PIL NEAREST to 256x256, then DNA-Net's PD_FA rule (the same area-based code)
  with 256 * 256 pixels per image, and IoU at 256."""
  from tests.test_protocols import OldBasicIRSTDPdFa

  raw, data_dir = prepared_fake_nuaa
  names = FAKE_SPLITS["50_50"]["test"]
  masks = _masks(raw, names)
  rng = np.random.default_rng(0)
  levels = {}
  for k, (n, m) in enumerate(masks.items()):
    shifted = np.roll(m, k % 2, axis=1)   # every other image shifted by one pixel
    fa = np.zeros_like(m)
    fa[0:2, 0:2] = True                                  # a 2x2 false alarm (area of some hits)
    levels[n] = np.where(shifted | fa, rng.integers(150, 256, m.shape),
                         rng.integers(0, 100, m.shape))
  _write(tmp_path / "pred", levels)
  cfg = score.dataset_config("nuaa_sirst", "50_50", str(data_dir), str(raw))
  results = {}
  for protocol in ("basicirstd", "basicirstd_2023", "dnanet"):
    eval_config = default.get_base_config().eval
    eval_config.protocol = protocol
    eval_config.roc_thresholds = ()   # and small: dense labelling, fewer bins, fast to compile
    eval_config.max_pixels, eval_config.num_bins, eval_config.max_targets = None, 8, 4
    results[protocol], _ = score.score_folder(tmp_path / "pred", cfg, "test", eval_config,
                                              batch_size=4)

  old = OldBasicIRSTDPdFa()
  for n in names:
    old.update(levels[n] / np.float32(255) > 0.5, masks[n], masks[n].shape)
  pd, fa = old.get()
  assert results["basicirstd_2023"]["Pd"] == pytest.approx(pd, rel=1e-12)
  assert results["basicirstd_2023"]["Fa"] == pytest.approx(fa, rel=1e-12)
  assert results["basicirstd"]["Fa"] > results["basicirstd_2023"]["Fa"]   # the rules differ here
  assert results["basicirstd"]["IoU"] == results["basicirstd_2023"]["IoU"]

  dna = OldBasicIRSTDPdFa()   # DNA-Net's PD_FA: the same statements, at 256 x 256
  inter = union = 0
  for n in names:
    s = np.asarray(Image.fromarray((levels[n] / np.float32(255)).astype(np.float32)).resize(
        (256, 256), Image.BILINEAR)) > 0.5
    m = np.asarray(Image.fromarray(masks[n].astype(np.uint8) * 255).resize(
        (256, 256), Image.NEAREST)) > 0
    dna.update(s, m, (256, 256))
    inter, union = inter + (s & m).sum(), union + (s | m).sum()
  pd, fa = dna.get()
  assert results["dnanet"]["Pd"] == pytest.approx(pd, rel=1e-12)
  assert results["dnanet"]["Fa"] == pytest.approx(fa, rel=1e-12)
  assert results["dnanet"]["IoU"] == pytest.approx(inter / (EPS + union), rel=1e-12)
  assert results["dnanet"]["IoU"] != results["basicirstd"]["IoU"]
  assert 0 < results["dnanet"]["Pd"] < 1   # a shift of 1 px is several px at 256 x 256
