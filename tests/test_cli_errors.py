"""Every command reports a user error as one line `error: ...` on stderr, exit status 2, no
traceback (irst_jax.errors.run_main); --verbose or IRST_JAX_VERBOSE=1 adds the traceback. Each
case fails before any compilation."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import app, flags
from PIL import Image

from irst_jax import errors
from tests.conftest import FAKE_SPLITS
from tests.test_export import tiny_artifact
from tests.test_score import _png_16_bit_rgb

ROOT = pathlib.Path(__file__).resolve().parents[1]
_ENV = dict(os.environ, JAX_PLATFORMS="cpu", IRST_JAX_MALLOC_TUNING="0")
_ENV.pop(errors.VERBOSE_ENV, None)


def _run(args, env=None, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=dict(_ENV, **(env or {})),
                        capture_output=True, text=True, timeout=timeout)


def _assert_one_line(out, *fragments):
  """Exit 2, the last stderr line is 'error: ...' holding every fragment, no traceback."""
  last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
  assert out.returncode == 2, out.stderr[-3000:]
  assert last.startswith("error: "), out.stderr[-3000:]
  for fragment in fragments:
    assert fragment in last, (fragment, last)
  assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
  return last


@pytest.mark.parametrize("args, fragments", [
    (["--workdir=W", "--bogus=1"], ["Unknown command line flag 'bogus'"]),
    (["--workdir=W", "--mode=evl"], ["--mode=evl", "train|eval|export"]),
    (["--config=configs/acm_unet.py"], ["--workdir", "must have a value"]),
    (["--workdir=W", "--config=configs/nope.py"],
     ["--config=configs/nope.py: cannot load the config file", "No such file"]),
    (["--workdir=W", "--config=acm_unt:smoke"],
     ["--config=acm_unt:smoke: cannot load the config file", "'acm_unt' is not a packaged config",
      "one of acm_fpn, acm_unet, cgranet, daea, dnanet, eaau_net"]),
    (["--workdir=W", "--config=dnanet:bogus"],   # a packaged config's name
     ["dnanet.py:bogus", "unknown config argument 'bogus'", "'smoke', 'pretrained_rgb'"]),
    (["--workdir=W", "--config=configs/acm_unet.py:nuaa_sirst,smoke",
      "--config.train.batch_sise=3"],
     ["--config.train.batch_sise=3: the config has no field 'batch_sise'", '"batch_size"']),
    (["--workdir=W", "--config=configs/acm_unet.py:bogus"],
     ["--config=configs/acm_unet.py:bogus", "unknown config argument 'bogus'"]),
    (["--workdir=W", "--config=configs/acm_unet.py", "--config.train.batch_size=abc"],
     ["--config.train.batch_size=abc", "invalid literal for int()"]),
    (["--workdir=W", "unexpected"], ["unexpected arguments: ['unexpected']"]),
])
def test_main_flag_and_config_errors(tmp_path, args, fragments):
  args = [a.replace("=W", f"={tmp_path / 'run'}") for a in args]
  _assert_one_line(_run(["-m", "irst_jax.main", *args]), *fragments)
  assert not (tmp_path / "run").exists()   # nothing written


def test_main_error_is_one_line_and_verbose_shows_the_traceback(tmp_path):
  args = ["-m", "irst_jax.main", "--mode=eval", f"--workdir={tmp_path / 'nowhere'}"]
  message = f"error: {tmp_path / 'nowhere' / 'config.json'} not found: "
  assert _assert_one_line(_run(args)).startswith(message)
  for out in (_run(args + ["--verbose"]), _run(args, env={errors.VERBOSE_ENV: "1"})):
    assert out.returncode == 2 and "Traceback (most recent call last)" in out.stderr
    assert "FileNotFoundError" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(message)


def test_predict_errors(tmp_path):
  nowhere = tmp_path / "nowhere"
  # irst_jax.predict: the short command (a shim running irst_jax.serving.predict's main).
  _assert_one_line(_run(["-m", "irst_jax.predict", f"--model={nowhere}", f"--input={tmp_path}",
                         f"--output={tmp_path / 'out'}"]),
                   f"{nowhere} is neither an exported detector (manifest.json) nor a training "
                   "workdir (config.json)")
  artifact = tiny_artifact(tmp_path / "artifact", threshold=1.5)
  Image.fromarray(np.zeros((5, 7), np.uint8)).save(tmp_path / "image.png")
  _assert_one_line(_run(["-m", "irst_jax.serving.predict", f"--model={artifact}",
                         f"--input={tmp_path / 'image.png'}", f"--output={tmp_path / 'out'}"]),
                   f"threshold 1.5 in {artifact / 'manifest.json'}: expected a probability in "
                   "(0, 1)")


def test_score_refuses_a_16_bit_colour_map(prepared_fake_nuaa, tmp_path):
  raw, data_dir = prepared_fake_nuaa
  names = FAKE_SPLITS["50_50"]["test"]
  (tmp_path / "pred").mkdir()
  for name in names[1:]:
    mask = Image.open(raw / "masks" / f"{name}_pixels0.png")
    mask.save(tmp_path / "pred" / f"{name}.png")
  h, w = np.asarray(Image.open(raw / "masks" / f"{names[0]}_pixels0.png")).shape
  _png_16_bit_rgb(tmp_path / "pred" / f"{names[0]}.png", h, w)
  _assert_one_line(_run(["-m", "irst_jax.score", f"--predictions={tmp_path / 'pred'}",
                         "--dataset=nuaa_sirst", f"--data_dir={data_dir}", f"--manual_dir={raw}"]),
                   f"{tmp_path / 'pred' / names[0]}.png is a 16-bit colour image")


def test_stats_errors(tmp_path):
  _assert_one_line(_run(["-m", "irst_jax.data.stats", "--dataset=bogus"]),
                   "Unknown dataset 'bogus'")
  nowhere = tmp_path / "nowhere"
  _assert_one_line(_run(["-m", "irst_jax.data.stats", "--dataset=nudt_sirst",
                         f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={nowhere}"]),
                   f"manual_dir {nowhere} does not exist")


def test_import_weights_names_the_missing_file(tmp_path):
  weights = tmp_path / "nowhere.pth"
  _assert_one_line(_run(["-m", "irst_jax.import_weights",
                         "--config=configs/dnanet.py:nudt_sirst,pretrained_rgb",
                         f"--weights={weights}", f"--workdir={tmp_path / 'run'}"]),
                   f"weight file {weights} not found")


_PROGRAM = """
import sys
from irst_jax import errors
def main(argv):
  raise {}("bad value 7\\nsecond line")
errors.run_main(main)
"""


def test_bugs_keep_their_traceback():
  user = _run(["-c", _PROGRAM.format("ValueError")])
  assert _assert_one_line(user) == "error: bad value 7 second line"
  bug = _run(["-c", _PROGRAM.format("TypeError")])
  assert bug.returncode == 1 and "Traceback (most recent call last)" in bug.stderr
  assert "TypeError: bad value 7" in bug.stderr and "error:" not in bug.stderr


def test_one_line_and_classification():
  assert errors.is_user_error(FileNotFoundError(2, "No such file")) and errors.is_user_error(
      OSError(28, "No space left on device")) and errors.is_user_error(errors.UserError("x"))
  assert errors.is_user_error(app.UsageError("x")) and errors.is_user_error(flags.Error("x"))
  assert not errors.is_user_error(TypeError("x")) and not errors.is_user_error(AssertionError())
  assert not errors.is_user_error(KeyError("x")) and not errors.is_user_error(ImportError("x"))
  assert errors.one_line(ValueError("a\n  - b\n\n  - c")) == "a - b - c"
  assert errors.one_line(FileNotFoundError()) == "FileNotFoundError"
  assert errors.one_line(OSError(28, "No space left on device", "/w/ckpt")) == (
      "[Errno 28] No space left on device: '/w/ckpt'")
  from irst_jax import train
  assert errors.is_user_error(train.TrainingDivergedError("loss is nan"))
  assert isinstance(train.TrainingDivergedError("x"), RuntimeError)
