"""Evaluation report: metrics.json, ROC / PR plots and a qualitative grid (matplotlib, Agg).

matplotlib is imported, with its file-only Agg backend selected, by the functions that draw,
so importing this module (as training does) does not import it.

`write_report(out_dir, values, curves, examples, eval_config)` writes

* ``metrics.json``: the evaluation protocol (``eval.protocol``), the table numbers (IoU, nIoU, Pd, Fa as a fraction, F-measure, AUC, AP,
  F-area, images) and the curves as lists;
* ``roc.png``: pixel-level ROC (TPR vs FPR, with AUC) and target-level ROC (Pd vs Fa x1e-6,
  one point per threshold of ``eval.roc_thresholds`` or of the protocol's own sweep);
* ``pr.png``: precision vs recall with AP;
* ``grid.png`` (when examples are given): one row per image: input, ground truth, and the
  prediction at the operating threshold with the Pd/Fa matching outcome coloured
  (:func:`irst_jax.evaluation.metrics.detection_maps`): detected targets green, false alarms yellow,
  missed targets red (their outline, since they have no predicted pixels), each circled.
"""
from __future__ import annotations

import json
import pathlib
from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from skimage.measure import label, regionprops

from irst_jax.evaluation import metrics, protocols

__all__ = ["write_report", "plot_curves", "qualitative_grid", "to_jsonable"]

_COLOURS = {"detected": (0.1, 0.9, 0.1), "false_alarm": (1.0, 0.85, 0.0), "missed": (1.0, 0.1, 0.1)}


def _pyplot():
  """matplotlib.pyplot with the Agg backend (PNG files, no display), imported when drawing."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def to_jsonable(tree):
  """Numbers and numpy arrays of a nested dict as JSON types (NaN -> null)."""
  if isinstance(tree, Mapping):
    return {str(k): to_jsonable(v) for k, v in tree.items()}
  arr = np.asarray(tree, dtype=np.float64)
  if arr.ndim == 0:
    value = float(arr)
    return value if np.isfinite(value) else None
  return [to_jsonable(v) for v in arr]


def plot_curves(curves: Mapping, out_dir: pathlib.Path, title: str = "") -> list[pathlib.Path]:
  """Writes roc.png and pr.png from :meth:`irst_jax.evaluation.curves.CurveAccumulator.result`."""
  plt = _pyplot()
  written = []
  if "roc" in curves:
    n_axes = 2 if "target_roc" in curves else 1
    fig, axes = plt.subplots(1, n_axes, figsize=(5 * n_axes, 4.2), squeeze=False)
    ax = axes[0, 0]
    ax.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], lw=1.5)
    ax.set(xlabel="false positive rate (pixels)", ylabel="true positive rate (pixels)",
           title=f"pixel ROC, AUC = {curves['AUC']:.4f}", ylim=(0, 1.02))
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    if n_axes == 2:
      t = curves["target_roc"]
      ax = axes[0, 1]
      ax.plot(np.asarray(t["Fa"]) * 1e6, t["Pd"], "o-", ms=3)
      for x, y, th in zip(np.asarray(t["Fa"]) * 1e6, t["Pd"], t["thresholds"]):
        ax.annotate(f"{th:g}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
      ax.set(xlabel="Fa (x1e-6)", ylabel="Pd", title="target-level ROC (label: threshold)")
      ax.grid(alpha=0.3)
    written.append(_save(fig, out_dir / "roc.png", title))
  if "pr" in curves:
    fig, ax = plt.subplots(figsize=(5, 4.2))
    pr = curves["pr"]
    ok = np.isfinite(pr["precision"])
    ax.plot(pr["recall"][ok], pr["precision"][ok], lw=1.5)
    ax.set(xlabel="recall (pixels)", ylabel="precision (pixels)", xlim=(0, 1), ylim=(0, 1.02),
           title=f"PR, AP = {curves['AP']:.4f}")
    ax.grid(alpha=0.3)
    written.append(_save(fig, out_dir / "pr.png", title))
  return written


def _save(fig, path: pathlib.Path, title: str) -> pathlib.Path:
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  _pyplot().close(fig)
  return path


def _circle(ax, region_mask: np.ndarray, colour) -> None:
  from matplotlib.patches import Circle

  for region in regionprops(label(region_mask, connectivity=2)):
    r, c = region.centroid
    radius = max(4.0, 0.5 * max(region.bbox[2] - region.bbox[0], region.bbox[3] - region.bbox[1]) + 3)
    ax.add_patch(Circle((c, r), radius, fill=False, ec=colour, lw=1.0, ls="--"))


def qualitative_grid(examples: Sequence[Mapping], path: pathlib.Path, eval_config) -> None:
  """Writes the qualitative grid of `examples` (dicts name, image, mask, score [H, W]).

  The prediction is ``score > eval_config.threshold``; the matching uses
  ``eval_config.distance_threshold`` and ``max_targets``.

  Raises:
    ValueError: if `examples` is empty.
  """
  if not examples:
    raise ValueError("qualitative_grid needs at least one example")
  plt = _pyplot()
  fig, axes = plt.subplots(len(examples), 3, figsize=(9, 3 * len(examples)), squeeze=False)
  for row, ex in zip(axes, examples):
    pred = np.asarray(ex["score"]) > float(eval_config.threshold)
    gt = np.asarray(ex["mask"], bool)
    maps = {k: np.asarray(v) for k, v in metrics.detection_maps(
        jnp.asarray(pred), jnp.asarray(gt), distance_threshold=float(eval_config.distance_threshold),
        max_targets=int(eval_config.max_targets)).items()}
    row[0].imshow(ex["image"], cmap="gray")
    row[0].set_title(ex["name"], fontsize=8)
    row[1].imshow(gt, cmap="gray", vmin=0, vmax=1)
    row[1].set_title("ground truth", fontsize=8)
    overlay = np.zeros(pred.shape + (3,))
    for key, colour in _COLOURS.items():
      overlay[maps[key]] = colour if key != "missed" else np.array(colour) * 0.6
    row[2].imshow(overlay)
    for key, colour in _COLOURS.items():
      if maps[key].any():
        _circle(row[2], maps[key], colour)
    row[2].set_title(f"prediction: detected {_count(maps['detected'])}, "
                     f"false alarms {_count(maps['false_alarm'])}, missed {_count(maps['missed'])}",
                     fontsize=7)
    for ax in row:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _count(mask: np.ndarray) -> int:
  return int(label(mask, connectivity=2).max())


def write_report(out_dir, values: Mapping[str, float], curves: Mapping,
                 examples: Sequence[Mapping], eval_config, title: str = "") -> pathlib.Path:
  """Writes metrics.json, roc.png, pr.png and (with examples) grid.png; returns out_dir."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  record = {"title": title, "protocol": protocols.get(eval_config).name,
            "metrics": to_jsonable(values), "curves": to_jsonable(curves)}
  (out_dir / "metrics.json").write_text(json.dumps(record, indent=1))
  plot_curves(curves, out_dir, title)
  if examples:
    qualitative_grid(examples, out_dir / "grid.png", eval_config)
  return out_dir

