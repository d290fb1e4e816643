"""Time to score NUDT-SIRST test (664 images): jnp batched path vs a numpy + scikit-image loop.

  python experiments/benchmark_metrics.py [--root=../shared/datasets/NUDT-SIRST] \
      [--limit=664] [--batch=32] [--out=experiments/results/benchmark_metrics.md]

Reads the 664 test masks (official layout: masks/NNNNNN.png, 50_50/test.txt) and makes
score maps with misses and false alarms: each mask is shifted by one pixel, a quarter of the
targets is dropped, random speckle is added, and scores are uniform in [0.3, 1) on predicted
pixels and in [0, 0.04) elsewhere (below the lowest sweep threshold, 0.05). Both paths compute the same numbers, checked equal:

* ``op``: IoU, nIoU, Pd, Fa, F-measure at the operating threshold 0.5;
* ``full``: ``op`` + pixel ROC/PR histograms (256 bins) + target-level Pd/Fa at the 11
  thresholds of ``configs/default.py``.

The numpy loop is written the way the PyTorch toolboxes score (DNA-Net's ``PD_FA`` /
``ROCMetric``, BasicIRSTD's ``mIoU`` / ``PD_FA``): per image, ``skimage.measure.label`` +
``regionprops`` at every threshold, the greedy centroid matching in Python, numpy pixel
counts; the pixel curves with ``np.bincount`` (a vectorised histogram, faster than the
toolboxes' loop over thresholds, so the ratio is not inflated). The jnp path is
``irst_jax.evaluation.curves.evaluation_outputs`` (jit, batches of ``--batch``). Times exclude reading
the PNGs and the jnp compilation (one warm-up call per shape, timed separately).
"""
from __future__ import annotations

import pathlib
import sys
import time

import jax
import numpy as np
from absl import app, flags
from PIL import Image
from skimage.measure import label, regionprops

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import default  # noqa: E402
from irst_jax import platform_settings  # noqa: E402
from irst_jax.evaluation import curves  # noqa: E402
from irst_jax.data import pipeline  # noqa: E402

_ROOT = flags.DEFINE_string("root", str(pathlib.Path(__file__).resolve().parents[2] / "shared"
                                        / "datasets" / "NUDT-SIRST"), "NUDT-SIRST folder.")
_LIMIT = flags.DEFINE_integer("limit", 664, "Number of test images.")
_BATCH = flags.DEFINE_integer("batch", 32, "jnp batch size.")
_OUT = flags.DEFINE_string("out", None, "Markdown file written with the results.")


def load(root: pathlib.Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
  names = (root / "50_50" / "test.txt").read_text().split()[:limit]
  masks = np.stack([np.asarray(Image.open(root / "masks" / f"{n}.png")) > 0 for n in names])
  rng = np.random.default_rng(0)
  pred = np.zeros_like(masks)
  for i, m in enumerate(masks):
    lab = label(m, connectivity=2)
    keep = np.isin(lab, [r.label for r in regionprops(lab) if rng.random() > 0.25])
    pred[i] = np.roll(keep, 1, axis=1) | (rng.random(m.shape) < 2e-4)
  scores = pipeline.host_zeros(pred.shape, np.float32)  # aligned: zero-copy on XLA:CPU
  scores[...] = np.where(pred, 0.3 + 0.7 * rng.random(pred.shape), 0.04 * rng.random(pred.shape))
  aligned_masks = pipeline.host_zeros(masks.shape, bool)
  aligned_masks[...] = masks
  return aligned_masks, scores


def numpy_image(score: np.ndarray, gt: np.ndarray, thresholds, num_bins: int) -> dict:
  """One image, the toolbox way: label + regionprops at every threshold, Python matching."""
  true = [np.array(r.centroid) for r in regionprops(label(gt, connectivity=2))]
  per_t = []
  for t in thresholds:
    pred = score > t
    regions = [(np.array(r.centroid), r.area) for r in regionprops(label(pred, connectivity=2))]
    matched = matched_area = 0
    for c in true:
      for j, (pc, area) in enumerate(regions):
        if np.linalg.norm(pc - c) < 3:
          matched += 1
          matched_area += area
          del regions[j]
          break
    per_t.append((float((pred & gt).sum()), float((pred | gt).sum()), float(pred.sum()),
                  len(true), matched, float(pred.sum() - matched_area)))
  out = {"sweep": np.array(per_t)}
  if num_bins:
    k = np.minimum((score * num_bins).astype(np.int64), num_bins - 1)
    out["hist"] = np.stack([np.bincount(k[gt], minlength=num_bins),
                            np.bincount(k[~gt], minlength=num_bins)])
  return out


def run_numpy(masks, scores, thresholds, num_bins):
  return [numpy_image(s, g, thresholds, num_bins) for s, g in zip(scores, masks)]


def make_step(eval_config, full: bool):
  return jax.jit(lambda s, m, v: curves.evaluation_outputs(s, 0.5, s, m, v, eval_config,
                                                           curves=full))


def run_jnp(step, masks, scores, batch: int):
  """Batches of `batch` as views of the arrays (the numpy loop gets them the same way); the
  masks as uint8 (as read from the PNGs; the loop gets them as bool), the scores as float32,
  the validity one shared uint8 array of ones; the last batch completed with dummy images
  (valid = 0: one shape)."""
  masks = masks.view(np.uint8)[..., None]
  scores = scores[..., None]
  ones = pipeline.host_zeros((batch,) + scores.shape[1:], np.uint8)
  ones[...] = 1
  outs = []
  for i in range(0, len(masks), batch):
    s, m, v = scores[i:i + batch], masks[i:i + batch], ones
    if len(s) < batch:
      k = len(s)
      s, m, v = (np.concatenate([x, np.zeros((batch - k,) + x.shape[1:], x.dtype)])
                 for x in (s, m, ones[:k]))
    outs.append(step(s, m, v))
  return jax.block_until_ready(outs)


def _check(ref, outs, thresholds, full):
  sweep = np.stack([r["sweep"] for r in ref], axis=1)  # [T, N, 6]
  op = thresholds.index(0.5)
  n = sweep.shape[1]
  stats = {k: np.concatenate([np.asarray(o["stats"][k]) for o in outs])[:n] for k in
           ("intersection", "union", "predicted", "targets", "matched", "false_alarm_pixels")}
  got = np.stack(list(stats.values()), axis=-1)
  np.testing.assert_array_equal(got, sweep[op])
  if full:
    hist = sum(np.asarray(o["hist"]) for o in outs)
    np.testing.assert_array_equal(hist, sum(r["hist"] for r in ref))
    swept = {k: np.concatenate([np.asarray(o["sweep"][k]) for o in outs], axis=1)[:, :n]
             for k in ("matched", "false_alarm_pixels")}
    np.testing.assert_array_equal(swept["matched"], sweep[..., 4])
    np.testing.assert_array_equal(swept["false_alarm_pixels"], sweep[..., 5])


def _time(fn, repeats=3):
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return best, result


def main(argv):
  del argv
  masks, scores = load(pathlib.Path(_ROOT.value), _LIMIT.value)
  cfg = default.get_base_config().eval
  sweep_t = [float(t) for t in cfg.roc_thresholds]
  n = len(masks)
  lines = [f"NUDT-SIRST 50_50 test, {n} images 256x256, jnp batch {_BATCH.value}, "
           f"{jax.devices()[0].platform}, JAX {jax.__version__}", "",
           "| work | numpy + scikit-image loop (s) | jnp (s) | speed-up | jnp compile (s) |",
           "|---|---|---|---|---|"]
  for full in (False, True):
    thresholds = sweep_t if full else [0.5]
    step = make_step(cfg, full)
    start = time.perf_counter()
    run_jnp(step, masks[:_BATCH.value], scores[:_BATCH.value], _BATCH.value)
    compile_s = time.perf_counter() - start
    t_np, ref = _time(lambda t=thresholds, f=full: run_numpy(masks, scores, t, cfg.num_bins if f
                                                             else 0))
    t_j, outs = _time(lambda step=step: run_jnp(step, masks, scores, _BATCH.value))
    _check(ref, outs, thresholds, full)
    name = ("full: op + 256-bin pixel ROC/PR + Pd/Fa at 11 thresholds" if full
            else "op: IoU, nIoU, Pd, Fa, F at 0.5")
    lines.append(f"| {name} | {t_np:.2f} | {t_j:.2f} | {t_np / t_j:.1f}x | {compile_s:.1f} |")
    print(lines[-1], flush=True)
  text = "\n".join(lines)
  print(text)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(text + "\n")


if __name__ == "__main__":
  platform_settings.apply()   # XLA CPU flags, on CPU only, as the entry points do
  app.run(main)
