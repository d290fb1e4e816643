"""Images/s of `python -m irst_jax.predict` over a folder, cold and warm compilation cache.

  JAX_PLATFORMS=cpu TFDS_DATA_DIR=~/tensorflow_datasets python experiments/benchmark_predict.py \
      [--workdir=runs/acm_unet_ref | --artifact=runs/acm_unet_ref/export] [--input=DIR] \
      [--batch_size=8]

Model: --artifact (an exported detector), or the best checkpoint of --workdir exported into a
temporary folder, or (neither given) an untrained ACM-U-Net (configs/acm_unet.py, initialised
with seed 0, exported the same way); speed does not depend on the weights.
Images: --input, or the NUAA-SIRST 50_50 test images (names in --dataset_dir/50_50/test.txt,
--dataset_dir/images/<name>.png), symlinked into a temporary folder (214 images, 198 sizes).

Runs the command twice in fresh subprocesses with JAX_COMPILATION_CACHE_DIR set to one new
empty folder: cold (empty cache: every program compiles) and warm (the same folder: programs
come from the cache). Each time is the wall clock of the whole command (interpreter and JAX
start, loading the artifact, reading, compiling, predicting, writing masks and overlays).
Prints images/s and the ratio to the targets of issue 20 (5 cold, 20 warm).
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGETS = {"cold": 5.0, "warm": 20.0}

_ARTIFACT = flags.DEFINE_string("artifact", None, "Exported detector directory.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir whose best checkpoint is "
                               "exported (when --artifact is not given).")
_INPUT = flags.DEFINE_string("input", None, "Folder of images (default: NUAA-SIRST 50_50 test).")
_DATASET_DIR = flags.DEFINE_string("dataset_dir", str(ROOT.parent / "shared/datasets/NUAA-SIRST"),
                                   "Raw NUAA-SIRST (images/, 50_50/test.txt).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "predict --batch_size.")


def _untrained_artifact(folder: pathlib.Path) -> pathlib.Path:
  """An exported untrained ACM-U-Net (needs the prepared NUAA-SIRST for its mean/std)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from configs import acm_unet
  from irst_jax import checkpoints, models
  from irst_jax.serving import export

  config = acm_unet.get_config("nuaa_sirst")
  workdir = folder / "untrained"
  checkpoints.save_config(workdir, config)
  model = models.create_model(config.model)
  variables = model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, 32, 32, config.model.in_channels)), train=False)
  store = checkpoints.CheckpointStore(workdir)
  store.save_best(0, dict(jax.tree_util.tree_map(np.asarray, dict(variables)),
                          step=np.int32(0)), {"IoU": 0.0})
  store.close()
  return export.export_workdir(workdir, folder / "artifact")


def _nuaa_test_folder(folder: pathlib.Path) -> pathlib.Path:
  dataset = pathlib.Path(_DATASET_DIR.value)
  names = (dataset / "50_50" / "test.txt").read_text().split()
  target = folder / "images"
  target.mkdir()
  for name in names:
    (target / f"{name}.png").symlink_to(dataset / "images" / f"{name}.png")
  return target


def _timed_predict(artifact: pathlib.Path, images: pathlib.Path, output: pathlib.Path,
                   cache: pathlib.Path) -> tuple[float, str]:
  command = [sys.executable, "-m", "irst_jax.predict", f"--model={artifact}",
             f"--input={images}", f"--output={output}", f"--batch_size={_BATCH_SIZE.value}"]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache))
  start = time.perf_counter()
  out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if out.returncode != 0:
    raise RuntimeError(f"predict failed ({out.returncode}):\n{out.stdout}\n{out.stderr[-3000:]}")
  return seconds, out.stdout.strip().splitlines()[-1]


def main(argv):
  del argv
  with tempfile.TemporaryDirectory(prefix="benchmark_predict_") as tmp:
    tmp = pathlib.Path(tmp)
    if _ARTIFACT.value:
      artifact, model = pathlib.Path(_ARTIFACT.value), f"artifact {_ARTIFACT.value}"
    elif _WORKDIR.value:
      from irst_jax.serving import export
      artifact = export.export_workdir(_WORKDIR.value, tmp / "artifact")
      model = f"best checkpoint of {_WORKDIR.value}"
    else:
      artifact, model = _untrained_artifact(tmp), "untrained ACM-U-Net (configs/acm_unet.py)"
    images = pathlib.Path(_INPUT.value) if _INPUT.value else _nuaa_test_folder(tmp)
    count = sum(1 for p in images.iterdir() if p.is_file())
    cache = tmp / "compilation_cache"
    cache.mkdir()
    print(f"model: {model}; {count} images in {images}; --batch_size={_BATCH_SIZE.value}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before the runs")
    print("| cache | seconds | images/s | target | ratio |")
    print("|---|---|---|---|---|")
    for kind in ("cold", "warm"):
      seconds, summary = _timed_predict(artifact, images, tmp / f"out_{kind}", cache)
      rate = count / seconds
      print(f"| {kind} | {seconds:.1f} | {rate:.2f} | {TARGETS[kind]:g} | "
            f"{rate / TARGETS[kind]:.2f} |   ({summary})", flush=True)
    entries = sum(1 for _ in cache.rglob("*") if _.is_file())
    print(f"compilation cache: {entries} file(s); load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  app.run(main)
