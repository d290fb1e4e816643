"""Train step (or inference) with and without one of `irst_jax/cpu/convolution.py`'s
CPU forms, interleaved in one process.

  python experiments/benchmark_cpu_convolution.py --config=configs/acm_unet.py --mode=train \
      --rounds=12
  python experiments/benchmark_cpu_convolution.py --config=configs/acm_unet.py \
      --without=rewrites --mode=train --steps_per_round=1 --rounds=40
  python experiments/benchmark_cpu_convolution.py --config=configs/acm_unet.py \
      --without=rewrites --mode=infer --steps_per_round=3 --rounds=20

For each of `--mode` (benchmark.py's flag: train, infer or both, the default), compiles the
pmapped train step of `irst_jax/train.py` or the jitted eval-mode forward pass of
`benchmark.py` twice: as shipped, and without
- `--without=materialise`: `cpu_convolution.materialise` made the identity, so convolutions
  and the bilinear resampler (`irst_jax/cpu/resample.py`) no longer materialise their inputs and
  cotangents (XLA then fuses the producers of those arrays into each consumer);
- `--without=rewrites`: no narrow-output padding, single-channel space-to-depth form or
  stride-2 sub-pixel input gradient (`cpu_convolution._REWRITES` emptied);
- `--without=sub_pixel`: stride-2 convolutions get XLA's own input gradient, the output
  gradient dilated with zeros (`cpu_convolution._sub_pixel_input_gradient` replaced).
Then times `--steps_per_round` steps of each in turn for `--rounds` rounds, alternating which
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
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402

from irst_jax import models, platform_settings, train  # noqa: E402
from irst_jax.cpu import convolution as cpu_convolution  # noqa: E402

# --config, --batch_size, --image_size and --mode (train, infer or both) are benchmark.py's flags.
_STEPS = flags.DEFINE_integer("steps_per_round", 4, "Timed steps per variant and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 12, "Interleaved rounds.")
_WITHOUT = flags.DEFINE_enum("without", "materialise", ["materialise", "rewrites", "sub_pixel"],
                             "The CPU form left out of the compared step.")


def _dilated_input_gradient(g, rhs):
  """XLA's own input gradient of the 3x3 / stride 2 / padding 1 convolution."""
  n, h, w, _ = g.shape
  zeros = jnp.zeros((n, 2 * h, 2 * w, rhs.shape[2]), g.dtype)
  return jax.vjp(lambda x: cpu_convolution._stride2_conv(x, rhs), zeros)[1](g)[0]


_DISABLED = {"materialise": lambda x: x, "rewrites": (), "sub_pixel": _dilated_input_gradient}
_ATTRIBUTE = {"materialise": "materialise", "rewrites": "_REWRITES",
              "sub_pixel": "_sub_pixel_input_gradient"}


def _compiled_step(model, config, schedule, state, batch, mode: str, shipped: bool):
  """A train-step (`mode` "train") or inference closure over its own state, traced and
  compiled as shipped or without."""
  attribute = _ATTRIBUTE[_WITHOUT.value]
  original = getattr(cpu_convolution, attribute)
  if not shipped:
    setattr(cpu_convolution, attribute, _DISABLED[_WITHOUT.value])
  try:
    if mode == "infer":
      variables = {"params": state.params, "batch_stats": state.batch_stats}
      forward = jax.jit(lambda v, x: models.final_logits(model.apply(v, x, train=False)))
      images = jnp.asarray(batch["image"].reshape(-1, *batch["image"].shape[2:]))

      def run():
        return forward(variables, images)
    else:
      step = train.make_train_step(model, config.train.loss, schedule)
      holder = [train.replicate(state)]

      def run():
        holder[0], metrics = step(holder[0], batch)
        return metrics["loss"]
    for _ in range(2):   # compiles (tracing reads the attribute) and warms up
      jax.block_until_ready(run())
  finally:
    setattr(cpu_convolution, attribute, original)
  return run


def main(argv):
  del argv
  config, n = benchmark.CONFIG.value, benchmark.BATCH.value
  model, state, schedule, batch = benchmark.setup(config, n, benchmark.SIZE.value)
  without = f"without {_WITHOUT.value}"
  modes = ("train", "infer") if benchmark.MODE.value == "both" else (benchmark.MODE.value,)
  for mode in modes:
    runs = {without: _compiled_step(model, config, schedule, state, batch, mode, shipped=False),
            "shipped": _compiled_step(model, config, schedule, state, batch, mode, shipped=True)}
    _compare(runs, without, mode, n)


def _compare(runs: dict, without: str, mode: str, n: int) -> None:
  """Times the two closures of `runs` in turn and prints their speeds and per-round ratios."""
  speeds = {name: [] for name in runs}
  for r in range(_ROUNDS.value):
    for name in (tuple(runs) if r % 2 == 0 else tuple(reversed(runs))):
      start = time.perf_counter()
      for _ in range(_STEPS.value):
        out = runs[name]()
      jax.block_until_ready(out)
      speeds[name].append(n * _STEPS.value / (time.perf_counter() - start))
  for name, values in speeds.items():
    print(f"{name:20s} {mode} images/s: median {statistics.median(values):.1f}, "
          f"rounds {' '.join(f'{v:.1f}' for v in values)}")
  ratios = [s / w for w, s in zip(speeds[without], speeds["shipped"])]
  print(f"{mode}: shipped / {without} per round: median {statistics.median(ratios):.3f}, "
        f"range {min(ratios):.2f}-{max(ratios):.2f}, above 1 in "
        f"{sum(r > 1 for r in ratios)} of {len(ratios)}")


if __name__ == "__main__":
  platform_settings.apply(malloc=True, huge_pages=True)   # as irst_jax.main does
  flags.mark_flag_as_required("config")
  app.run(main)
