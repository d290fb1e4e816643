"""Train-step and inference throughput (images/s) and peak memory of any config.

  python experiments/benchmark.py --config=configs/acm_unet.py --batch_size=8 --image_size=256

Uses the same pmapped train step as training (all local devices) and a jitted eval-mode
forward pass, on random data, after `--warmup` untimed steps. With `--serve` it times on
request instead (`serve_steps.serve`; used by `benchmark_vs_torch.py --interleave`). Peak
memory is the device's `peak_bytes_in_use` where the backend reports it (GPU/TPU),
otherwise the process's peak resident set size (CPU).
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_steps  # noqa: E402

from irst_jax import models, optim, platform_settings, train  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch size.")
SIZE = flags.DEFINE_integer("image_size", 256, "Square input size (pixels).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps (compilation).")
MODE = flags.DEFINE_enum("mode", "both", ["train", "infer", "both"], "What to time.")
_SERVE = flags.DEFINE_bool("serve", False, "After warm-up, time steps on request (serve_steps).")


def _peak_memory_mb() -> float:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(fn, steps: int, warmup: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def setup(config, n: int, size: int):
  """(model, initial train state, lr schedule, random batch) of `config` for batch `n` of
  `size` x `size` images; the batch is {'image', 'mask'} [devices, n / devices, size, size, C]."""
  devices = jax.local_device_count()
  model = models.create_model(config.model, axis_name=train.AXIS)
  tx, schedule = optim.create_optimizer(config.optim, 100, config.train.num_epochs)
  state = train.create_train_state(model, config, tx, (1, size, size, config.model.in_channels))
  rng = np.random.default_rng(0)
  image = rng.normal(size=(n, size, size, config.model.in_channels)).astype(np.float32)
  mask = (rng.random((n, size, size, 1)) > 0.999).astype(np.float32)
  batch = {"image": image.reshape(devices, n // devices, size, size, -1),
           "mask": mask.reshape(devices, n // devices, size, size, 1)}
  return model, state, schedule, batch


def main(argv):
  del argv
  config = CONFIG.value
  n, size, devices = BATCH.value, SIZE.value, jax.local_device_count()
  model, state, schedule, batch = setup(config, n, size)
  result = {"config": config.model.name, "batch_size": n, "image_size": size,
            "devices": devices, "backend": jax.default_backend(), "jax": jax.__version__}
  runs = {}
  if MODE.value in ("train", "both"):
    step = train.make_train_step(model, config.train.loss, schedule)
    replicated = [train.replicate(state)]

    def train_once():
      replicated[0], metrics = step(replicated[0], batch)
      return metrics["loss"]
    runs["train"] = train_once
  if MODE.value in ("infer", "both"):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    forward = jax.jit(lambda v, x: models.final_logits(model.apply(v, x, train=False)))
    x = jnp.asarray(batch["image"].reshape(n, size, size, -1))
    runs["infer"] = lambda: forward(variables, x)
  if _SERVE.value:
    for run in runs.values():
      for _ in range(_WARMUP.value):
        jax.block_until_ready(run())
    serve_steps.serve(runs)
    return
  for mode, run in runs.items():
    key = "train_images_per_sec" if mode == "train" else "inference_images_per_sec"
    result[key] = n / _time(run, _STEPS.value, _WARMUP.value)
  result["peak_memory_mb"] = _peak_memory_mb()
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  platform_settings.apply(malloc=True, huge_pages=True)   # as irst_jax.main does
  flags.mark_flag_as_required("config")
  app.run(main)
