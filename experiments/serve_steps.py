"""Timing on request, for interleaving two benchmark processes step by step.

`benchmark.py --serve` (JAX) and `benchmark_torch.py --serve` (PyTorch) build their model, warm
up, then call :func:`serve`; :class:`Server` runs such a script and sends it requests
(`benchmark_vs_torch.py --interleave`, `benchmark_xla_flags.py`).
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile
import time

_REPO = pathlib.Path(__file__).resolve().parents[1]


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


class Server:
  """A benchmark script running with --serve: `time(mode, steps)` -> seconds."""

  def __init__(self, cmd: list[str], env: dict | None = None):
    self.cmd = cmd
    # stderr (JAX and absl logs) goes to a file: an unread pipe would fill up and block it.
    self.stderr = tempfile.TemporaryFile("w+")
    self.proc = subprocess.Popen([*cmd, "--serve"], cwd=_REPO, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)

  def _line(self) -> str:
    line = self.proc.stdout.readline()
    if not line:
      code = self.proc.wait()
      self.stderr.seek(0)
      raise RuntimeError(f"{' '.join(self.cmd)} --serve exited with code {code}:\n"
                         f"{self.stderr.read()[-2000:]}")
    return line.strip()

  def wait_ready(self) -> None:
    while self._line() != "ready":
      pass

  def time(self, mode: str, steps: int) -> float:
    self.proc.stdin.write(f"{mode} {steps}\n")
    self.proc.stdin.flush()
    return json.loads(self._line())["seconds"]

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.flush()
      self.proc.wait(timeout=60)
    self.stderr.close()
