"""Train and inference speed with and without extra XLA flags, timed step by step.

Two `benchmark.py --serve` processes of the same config run side by side, A with the
environment's `XLA_FLAGS` (plus irst_jax's own, `irst_jax/xla_cpu_flags.py`) and B with
`--flags` added; each round times `--steps` steps of one, then of the other, alternating
which goes first. Prints each process's median images/s and the median per-round ratio B / A
with the number of rounds above 1. Two processes with the same flags differ by a few percent
(experiments/results/benchmark_acm_unet.md, session 7), so a flag is worth keeping only well
beyond that.

  python experiments/benchmark_xla_flags.py --config=configs/acm_unet.py \\
      --flags=--xla_cpu_enable_concurrency_optimized_scheduler=true --rounds=16

`--env=NAME=VALUE,...` sets environment variables for B instead or as well, e.g. B without
the heap on transparent huge pages (`irst_jax/malloc_tuning.py`):

  python experiments/benchmark_xla_flags.py --env=GLIBC_TUNABLES=glibc.malloc.hugetlb=0
"""
from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags
from serve_steps import Server

_CONFIG = flags.DEFINE_string("config", "configs/acm_unet.py", "Config file (benchmark.py).")
_FLAGS = flags.DEFINE_string("flags", "", "XLA flags added for process B.")
_ENV = flags.DEFINE_list("env", [], "NAME=VALUE environment variables set for process B.")
_ROUNDS = flags.DEFINE_integer("rounds", 16, "Rounds.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps per process and mode in a round.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Batch size.")
_SIZE = flags.DEFINE_integer("image_size", 256, "Square input size (pixels).")
_MODES = ("train", "infer")


def main(argv):
  del argv
  cmd = [sys.executable, "experiments/benchmark.py", f"--config={_CONFIG.value}", "--mode=both",
         f"--batch_size={_BATCH.value}", f"--image_size={_SIZE.value}"]
  if not _FLAGS.value and not _ENV.value:
    raise app.UsageError("give --flags, --env or both: what process B has in addition")
  env_b = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {_FLAGS.value}".strip())
  for item in _ENV.value:
    name, sep, value = item.partition("=")
    if not sep:
      raise app.UsageError(f"--env item {item!r} is not NAME=VALUE")
    env_b[name] = value
  servers = {"A": Server(cmd), "B": Server(cmd, env_b)}
  speeds = {m: {"A": [], "B": []} for m in _MODES}
  try:
    for server in servers.values():
      server.wait_ready()
    for r in range(_ROUNDS.value):
      for mode in _MODES:
        for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
          time.sleep(0.2)   # lets the other process's worker threads go idle
          seconds = servers[name].time(mode, _STEPS.value)
          speeds[mode][name].append(_STEPS.value * _BATCH.value / seconds)
      print(f"round {r + 1}/{_ROUNDS.value}: " + ", ".join(
          f"{m} A {speeds[m]['A'][-1]:.1f} B {speeds[m]['B'][-1]:.1f}" for m in _MODES),
            flush=True)
  finally:
    for server in servers.values():
      server.close()
  added = " ".join([_FLAGS.value, *_ENV.value]).strip()
  print(f"B = A + {added}; images/s, {_CONFIG.value}, batch {_BATCH.value}, "
        f"{_SIZE.value}x{_SIZE.value}")
  for mode in _MODES:
    a, b = speeds[mode]["A"], speeds[mode]["B"]
    ratios = [y / x for x, y in zip(a, b)]
    print(f"{mode}: A {statistics.median(a):.1f}, B {statistics.median(b):.1f}, B / A median "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.2f}-{max(ratios):.2f}, "
          f"above 1 in {sum(x > 1 for x in ratios)} of {len(ratios)} rounds)")


if __name__ == "__main__":
  app.run(main)
