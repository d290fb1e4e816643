"""Timing on request, for interleaving two benchmark processes step by step.

`benchmark.py --serve` (JAX) and `benchmark_torch.py --serve` (PyTorch) build their model, warm
up, then call :func:`serve`; `benchmark_vs_torch.py --interleave` drives the two in turn.
"""
from __future__ import annotations

import json
import sys
import time


def serve(runs: dict, stdin=sys.stdin, stdout=sys.stdout) -> None:
  """Answers requests "<mode> <steps>" (one a line; mode a key of `runs`) with one JSON line
  {"mode", "steps", "seconds"}, until "quit" or end of input. Prints "ready" first.

  `runs` maps a mode to a function taking no argument; a result with `block_until_ready`
  (a JAX array) is waited for after the last step, so "seconds" covers the computation."""
  print("ready", file=stdout, flush=True)
  for line in stdin:
    if line.strip() == "quit":
      break
    mode, steps = line.split()
    start = time.perf_counter()
    for _ in range(int(steps)):
      out = runs[mode]()
    _block(out)
    print(json.dumps({"mode": mode, "steps": int(steps),
                      "seconds": time.perf_counter() - start}), file=stdout, flush=True)


def _block(out):
  if hasattr(out, "block_until_ready"):
    out.block_until_ready()
