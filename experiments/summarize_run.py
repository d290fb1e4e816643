"""Summarises a training workdir: final and best evaluation metrics as a markdown table, the
median training throughput and wall time, and a PNG of the learning curves.

  python experiments/summarize_run.py --workdir=runs/acm_unet --plot=experiments/results/acm_unet_curves.png
"""
from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from irst_jax.evaluation import tables  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (holds metrics.jsonl).")
_PLOT = flags.DEFINE_string("plot", None, "Where to write the learning-curve PNG (optional).")


def load_records(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary_table(records: list[dict]) -> str:
  evals = [r for r in records if r["split"] != "train"]
  if not evals:
    raise ValueError("no evaluation records yet")
  best = max(evals, key=lambda r: r["IoU"])
  return tables.markdown_table({"final": evals[-1], "best IoU": best},
                               ("epoch", "IoU", "nIoU", "Pd", "Fa"), "checkpoint")


def plot_curves(records: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] != "train"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  axes[0].plot([r["epoch"] for r in train], [r["loss"] for r in train])
  axes[0].set(title="training loss", xlabel="epoch")
  for key in ("IoU", "nIoU", "Pd"):
    axes[1].plot([r["epoch"] for r in evals], [r[key] for r in evals], label=key)
  axes[1].set(title="test metrics", xlabel="epoch", ylim=(0, 1))
  axes[1].legend()
  axes[2].semilogy([r["epoch"] for r in evals], [r["Fa"] * 1e6 for r in evals])
  axes[2].set(title="Fa (x1e-6)", xlabel="epoch")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value)
  records = load_records(workdir)
  print(summary_table(records))
  speeds = sorted(r["images_per_sec"] for r in records if r["split"] == "train"
                  and r["images_per_sec"] == r["images_per_sec"])
  if speeds:
    print(f"\nmedian training throughput: {speeds[len(speeds) // 2]:.1f} images/s")
  if _PLOT.value:
    plot_curves(records, _PLOT.value)
    print(f"curves written to {_PLOT.value}")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
