"""JAX against PyTorch on this machine, in alternating rounds: the speed ratio with its spread.

  python experiments/benchmark_vs_torch.py --model=acm_unet --rounds=3
  python experiments/benchmark_vs_torch.py --model=dnanet --rounds=3 --steps=4 --warmup=1 \
      --out=experiments/results/benchmark_vs_torch_dnanet.md

Each round runs `benchmark_torch.py` and then `benchmark.py` (same batch, image size and
step counts) as separate processes, one after the other, so both see the same machine state;
a shared machine's speed drifts by tens of percent between minutes, which single runs of the
two scripts minutes apart cannot separate from the frameworks. Prints one row per round and
the median of the per-round JAX/PyTorch ratios; `--out` writes the table as Markdown.
"""
from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys

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

_KEYS = ("train_images_per_sec", "inference_images_per_sec")


def _run(cmd: list[str]) -> dict:
  """Runs one benchmark script and returns its JSON result (its last printed object)."""
  proc = subprocess.run(cmd, cwd=_HERE.parent, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n"
                       f"{proc.stderr[-2000:]}")
  text = proc.stdout
  return json.loads(text[text.rindex("{\n"):])


def main(argv):
  del argv
  common = [f"--batch_size={_BATCH.value}", f"--image_size={_SIZE.value}",
            f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}", f"--mode={_MODE.value}"]
  torch_cmd = [sys.executable, str(_HERE / "benchmark_torch.py"), f"--model={_MODEL.value}",
               *common]
  jax_cmd = [sys.executable, str(_HERE / "benchmark.py"),
             f"--config={_CONFIGS[_MODEL.value]}", *common]
  keys = [k for k in _KEYS if _MODE.value == "both" or k.startswith(_MODE.value)]
  lines = [f"{_MODEL.value}, batch {_BATCH.value}, {_SIZE.value}x{_SIZE.value}, "
           f"{_STEPS.value} timed steps after {_WARMUP.value}; images/s", "",
           "| round | " + " | ".join(f"PyTorch {k.split('_')[0]} | JAX {k.split('_')[0]} | ratio"
                                    for k in keys) + " |",
           "|---|" + "---|---|---|" * len(keys)]
  print("\n".join(lines), flush=True)
  ratios = {k: [] for k in keys}
  for r in range(1, _ROUNDS.value + 1):
    ref, ours = _run(torch_cmd), _run(jax_cmd)
    cells = []
    for k in keys:
      ratios[k].append(ours[k] / ref[k])
      cells += [f"{ref[k]:.3g}", f"{ours[k]:.3g}", f"{ratios[k][-1]:.2f}x"]
    lines.append(f"| {r} | " + " | ".join(cells) + " |")
    print(lines[-1], flush=True)
  lines += ["", "Median JAX / PyTorch ratio: " + ", ".join(
      f"{k.split('_')[0]} {statistics.median(v):.2f}x (range {min(v):.2f}-{max(v):.2f}x)"
      for k, v in ratios.items())]
  print(lines[-1])
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
