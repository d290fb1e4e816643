"""Train step with and without `layers._materialise`, interleaved in one process.

  python experiments/benchmark_materialise.py --config=configs/acm_unet.py --rounds=12

Compiles the pmapped train step of `irst_jax/train.py` twice: as shipped, where convolutions
materialise their input and output cotangent and the bilinear resampler its cotangent
(`layers.conv_general_dilated`, `layers._resampler`), and with `layers._materialise` made the
identity (XLA then fuses the producers of those arrays into each consumer, as before). Then
times `--steps` steps of each in turn for `--rounds` rounds, alternating which goes first.
On a shared machine whose speed drifts by tens of percent between minutes, only this
interleaving separates a few percent; the per-round ratio and its median are printed.
Random data, batch `--batch_size`, `--image_size` squared, 1 input channel.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from irst_jax import malloc_tuning, models, optim, train  # noqa: E402
from irst_jax.models import layers  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch size.")
_SIZE = flags.DEFINE_integer("image_size", 256, "Square input size (pixels).")
_STEPS = flags.DEFINE_integer("steps", 4, "Timed steps per variant and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 12, "Interleaved rounds.")


def _compiled_step(model, config, schedule, state, batch, materialise: bool):
  """A train-step closure over its own state, traced and compiled with or without."""
  shipped = layers._materialise
  if not materialise:
    layers._materialise = lambda x: x
  try:
    step = train.make_train_step(model, config.train.loss, schedule)
    holder = [train.replicate(state)]

    def run():
      holder[0], metrics = step(holder[0], batch)
      return metrics["loss"]
    for _ in range(2):   # compiles (tracing reads layers._materialise) and warms up
      jax.block_until_ready(run())
  finally:
    layers._materialise = shipped
  return run


def main(argv):
  del argv
  malloc_tuning.apply()
  config = _CONFIG.value
  n, size, devices = _BATCH.value, _SIZE.value, jax.local_device_count()
  model = models.create_model(config.model, axis_name=train.AXIS)
  tx, schedule = optim.create_optimizer(config.optim, 100, config.train.num_epochs)
  state = train.create_train_state(model, config, tx, (1, size, size, config.model.in_channels))
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(devices, n // devices, size, size,
                                     config.model.in_channels)).astype(np.float32),
           "mask": (rng.random((devices, n // devices, size, size, 1)) > 0.999).astype(
               np.float32)}
  runs = {name: _compiled_step(model, config, schedule, state, batch, name == "materialised")
          for name in ("plain", "materialised")}
  speeds = {name: [] for name in runs}
  for r in range(_ROUNDS.value):
    for name in (("plain", "materialised") if r % 2 == 0 else ("materialised", "plain")):
      start = time.perf_counter()
      for _ in range(_STEPS.value):
        out = runs[name]()
      jax.block_until_ready(out)
      speeds[name].append(n * _STEPS.value / (time.perf_counter() - start))
  for name, values in speeds.items():
    print(f"{name:13s} train images/s: median {statistics.median(values):.1f}, "
          f"rounds {' '.join(f'{v:.1f}' for v in values)}")
  ratios = [m / p for p, m in zip(speeds["plain"], speeds["materialised"])]
  print(f"materialised / plain per round: median {statistics.median(ratios):.2f}, "
        f"range {min(ratios):.2f}-{max(ratios):.2f}, above 1 in "
        f"{sum(r > 1 for r in ratios)} of {len(ratios)}")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
