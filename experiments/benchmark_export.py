"""Inference images/s of an exported detector against in-framework inference.

  JAX_PLATFORMS=cpu taskset -c 1 python experiments/benchmark_export.py \
      --workdir=runs/acm_unet_nuaa_sirst [--export_dir=/tmp/export] [--steps=10]

Exports the workdir's best checkpoint (irst_jax.serving.export), then times, per image size
(256x256 with batch 8 and 640x512 with batch 2, grey uint8-range float32 input):
  exported      Detector.from_export's network call: the deserialized jax.export module
                (normalise, pad, network, crop, connected components)
  in-framework  the same function jit-compiled from the model code (export.workdir_detector)
  model only    jit(model.apply) on an already normalised, padded batch (what the evaluation
                and experiments/benchmark.py time; no components)
Each: one untimed call (compilation), then `--steps` timed calls; images/s = steps x batch /
seconds. Prints a markdown table.
"""
from __future__ import annotations

import functools
import time

import jax
import numpy as np
from absl import app, flags

from irst_jax import models, platform_settings
from irst_jax.serving import export
from irst_jax.serving.detector import Detector

_WORKDIR = flags.DEFINE_string("workdir", "runs/acm_unet_nuaa_sirst", "Trained workdir.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", "/tmp/irst_benchmark_export", "Artifact dir.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls per measurement.")
SHAPES = ((8, 256, 256), (2, 512, 640))  # (batch, H, W)


def _images_per_sec(fn, batch: int, steps: int) -> float:
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(fn())
  return steps * batch / (time.perf_counter() - start)


def main(argv):
  del argv
  path = export.export_workdir(_WORKDIR.value, _EXPORT_DIR.value)
  exported = Detector.from_export(path)
  in_framework = export.workdir_detector(_WORKDIR.value)
  config, variables, step = export.load_workdir(_WORKDIR.value)
  model = models.create_model(config.model)
  apply = jax.jit(lambda v, x: models.final_logits(model.apply(v, x, train=False)))
  threshold = exported.logit_threshold
  print(f"{config.model.name}, best checkpoint (step {step}) of {_WORKDIR.value}; "
        f"{jax.devices()[0].platform}, {_STEPS.value} timed steps\n")
  print("| input (H x W) | batch | exported | in-framework | model only |")
  print("|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for batch, h, w in SHAPES:
    x = rng.uniform(0, 255, (batch, h, w, 1)).astype(np.float32)
    padded = jax.device_put(((x - 100.0) / 30.0).astype(np.float32))  # h, w multiples of 32
    sizes = np.full((batch, 2), (h, w), np.int32)  # every image fills its canvas
    calls = [functools.partial(d.forward, x, sizes, threshold) for d in (exported, in_framework)]
    calls.append(functools.partial(apply, variables, padded))
    rates = [_images_per_sec(call, batch, _STEPS.value) for call in calls]
    print(f"| {h} x {w} | {batch} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")


if __name__ == "__main__":
  platform_settings.apply()   # XLA CPU flags, on CPU only, as the entry points do
  app.run(main)
