"""JAX against PyTorch on this machine, in alternating rounds: the speed ratio with its spread.

  python experiments/benchmark_vs_torch.py --model=acm_unet --rounds=3
  python experiments/benchmark_vs_torch.py --model=dnanet --rounds=3 --steps=4 --warmup=1 \
      --out=experiments/results/benchmark_vs_torch_dnanet.md

Each round runs `benchmark_torch.py` and then `benchmark.py` (same batch, image size and
step counts) as separate processes, one after the other, so both see the same machine state;
a shared machine's speed drifts by tens of percent between minutes, which single runs of the
two scripts minutes apart cannot separate from the frameworks. Prints one row per round and
the median of the per-round JAX/PyTorch ratios; `--out` writes the table as Markdown.

With `--interleave`, both scripts start once, in `--serve` mode, and stay running; each round
then times `--steps` steps of one and right after them `--steps` steps of the other
(alternating which goes first), so the two numbers of a round are seconds, not minutes,
apart:

  python experiments/benchmark_vs_torch.py --model=acm_unet --interleave --steps=2 --rounds=30

Each process carries a speed bias of its own (two identical JAX servers: a few percent; one
run of 40 rounds gave 0.91x where the run before it gave 1.01x), so `--restarts=K` splits the
rounds over K fresh pairs of servers, started one pair after the other, and also prints each
pair's median. The JAX side runs as `irst_jax.main` does, with glibc's heap on transparent
huge pages (`irst_jax/malloc_tuning.py`); PyTorch as it comes. Set
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in the environment to give PyTorch the same.
"""
from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
import time

import serve_steps
from absl import app, flags

_HERE = pathlib.Path(__file__).resolve().parent
_CONFIGS = {"acm_unet": "configs/acm_unet.py", "dnanet": "configs/dnanet.py"}

_MODEL = flags.DEFINE_enum("model", "acm_unet", sorted(_CONFIGS), "Network.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Batch size.")
_SIZE = flags.DEFINE_integer("image_size", 256, "Square input size (pixels).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps (JAX: includes compilation).")
_MODE = flags.DEFINE_enum("mode", "both", ["train", "infer", "both"], "What to time.")
_OUT = flags.DEFINE_string("out", None, "Markdown file written with the table.")
_INTERLEAVE = flags.DEFINE_bool("interleave", False, "Keep both scripts running (--serve) and "
                                "alternate --steps steps of each within every round.")
_RESTARTS = flags.DEFINE_integer("restarts", 1, "With --interleave: fresh pairs of servers the "
                                 "rounds are split over.")

_KEYS = {"train": "train_images_per_sec", "infer": "inference_images_per_sec"}  # mode -> key


def _run(cmd: list[str]) -> dict:
  """Runs one benchmark script and returns its JSON result (its last printed object)."""
  proc = subprocess.run(cmd, cwd=_HERE.parent, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n"
                       f"{proc.stderr[-2000:]}")
  text = proc.stdout
  return json.loads(text[text.rindex("{\n"):])


def _interleaved_rounds(torch_cmd: list[str], jax_cmd: list[str], keys: list[str]):
  """Yields one {key: (PyTorch images/s, JAX images/s)} a round, from two running servers,
  started afresh `--restarts` times."""
  pairs = max(1, _RESTARTS.value)
  for pair in range(pairs):
    rounds = _ROUNDS.value // pairs + (pair < _ROUNDS.value % pairs)
    servers = {"PyTorch": serve_steps.Server(torch_cmd), "JAX": serve_steps.Server(jax_cmd)}
    try:
      for server in servers.values():
        server.wait_ready()
      for r in range(rounds):
        row = {}
        for key in keys:
          mode = next(m for m, k in _KEYS.items() if k == key)
          order = ("PyTorch", "JAX") if r % 2 == 0 else ("JAX", "PyTorch")
          speed = {}
          for name in order:
            time.sleep(0.2)   # lets the other framework's worker threads go idle
            speed[name] = _STEPS.value * _BATCH.value / servers[name].time(mode, _STEPS.value)
          row[key] = (speed["PyTorch"], speed["JAX"])
        yield pair, row
    finally:
      for server in servers.values():
        server.close()


def _separate_rounds(torch_cmd: list[str], jax_cmd: list[str], keys: list[str]):
  """Yields one {key: (PyTorch images/s, JAX images/s)} a round, one process each."""
  for _ in range(_ROUNDS.value):
    ref, ours = _run(torch_cmd), _run(jax_cmd)
    yield 0, {k: (ref[k], ours[k]) for k in keys}


def main(argv):
  del argv
  common = [f"--batch_size={_BATCH.value}", f"--image_size={_SIZE.value}",
            f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}", f"--mode={_MODE.value}"]
  torch_cmd = [sys.executable, str(_HERE / "benchmark_torch.py"), f"--model={_MODEL.value}",
               *common]
  jax_cmd = [sys.executable, str(_HERE / "benchmark.py"),
             f"--config={_CONFIGS[_MODEL.value]}", *common]
  keys = [k for m, k in _KEYS.items() if _MODE.value in ("both", m)]
  how = ("both running, interleaved within each round" if _INTERLEAVE.value
         else "one process each a round")
  lines = [f"{_MODEL.value}, batch {_BATCH.value}, {_SIZE.value}x{_SIZE.value}, "
           f"{_STEPS.value} timed steps after {_WARMUP.value} ({how}); images/s", "",
           "| round | " + " | ".join(f"PyTorch {k.split('_')[0]} | JAX {k.split('_')[0]} | ratio"
                                    for k in keys) + " |",
           "|---|" + "---|---|---|" * len(keys)]
  print("\n".join(lines), flush=True)
  ratios = {k: [] for k in keys}
  pair_ratios: dict[int, dict[str, list[float]]] = {}
  rounds = (_interleaved_rounds if _INTERLEAVE.value else _separate_rounds)(
      torch_cmd, jax_cmd, keys)
  for r, (pair, row) in enumerate(rounds, start=1):
    cells = []
    for k in keys:
      ref, ours = row[k]
      ratios[k].append(ours / ref)
      pair_ratios.setdefault(pair, {key: [] for key in keys})[k].append(ours / ref)
      cells += [f"{ref:.3g}", f"{ours:.3g}", f"{ratios[k][-1]:.2f}x"]
    lines.append(f"| {r} | " + " | ".join(cells) + " |")
    print(lines[-1], flush=True)
  summary = len(lines)
  lines.append("")
  if len(pair_ratios) > 1:
    lines += [f"Server pair {pair + 1}: median " + ", ".join(
        f"{k.split('_')[0]} {statistics.median(v):.2f}x" for k, v in by_key.items())
        for pair, by_key in pair_ratios.items()]
  lines.append("Median JAX / PyTorch ratio: " + ", ".join(
      f"{k.split('_')[0]} {statistics.median(v):.2f}x (range {min(v):.2f}-{max(v):.2f}x, "
      f"above 1 in {sum(x > 1 for x in v)} of {len(v)} rounds)" for k, v in ratios.items()))
  print("\n".join(lines[summary + 1:]))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
