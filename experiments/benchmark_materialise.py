"""Train step with and without `layers._materialise`, interleaved in one process.

  python experiments/benchmark_materialise.py --config=configs/acm_unet.py --rounds=12

Compiles the pmapped train step of `irst_jax/train.py` twice: as shipped, where convolutions
materialise their input and output cotangent and the bilinear resampler its cotangent
(`layers.conv_general_dilated`, `layers._resampler`), and with `layers._materialise` made the
identity (XLA then fuses the producers of those arrays into each consumer, as before). Then
times `--steps_per_round` steps of each in turn for `--rounds` rounds, alternating which
goes first. On a shared machine whose speed drifts by tens of percent between minutes, only this
interleaving separates a few percent; the per-round ratio and its median are printed.
Random data, batch `--batch_size`, `--image_size` squared, 1 input channel.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import jax
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402

from irst_jax import malloc_tuning, train  # noqa: E402
from irst_jax.models import layers  # noqa: E402

# --config, --batch_size and --image_size are benchmark.py's flags.
_STEPS = flags.DEFINE_integer("steps_per_round", 4, "Timed steps per variant and round.")
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
  config, n = benchmark.CONFIG.value, benchmark.BATCH.value
  model, state, schedule, batch = benchmark.setup(config, n, benchmark.SIZE.value)
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
