"""Threshold sweeps: histograms, pixel ROC/AUC, PR/AP, target-level ROC, F-measure, F-area."""
from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from irst_jax.evaluation import curves, metrics, tables
from tests.test_metrics import _random_images, _reference_image


def _nhwc(x):
  return np.asarray(x, np.float32)[..., None]


def _accumulate(scores, masks, valids, num_bins, chunks=1):
  acc = curves.CurveAccumulator()
  for s, m, v in zip(*(np.array_split(a, chunks) for a in (scores, masks, valids))):
    acc.update(curves.score_histograms(_nhwc(s), _nhwc(m), _nhwc(v), num_bins))
  return acc.result()


def _auc_mann_whitney(pos, neg):
  """P(score_pos > score_neg) + 0.5 P(equal): the area under the ROC, by its definition."""
  pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
  return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def _ap_reference(pos, neg):
  """sum_n (R_n - R_{n-1}) P_n over the distinct scores in decreasing order."""
  scores = np.concatenate([pos, neg])
  labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
  ap, r_prev = 0.0, 0.0
  for t in np.unique(scores)[::-1]:
    sel = scores >= t
    tp = labels[sel].sum()
    p, r = tp / sel.sum(), tp / len(pos)
    ap += (r - r_prev) * p
    r_prev = r
  return ap


def test_hand_computed_auc_and_ap():
  # Positive scores 0.9, 0.6; negative 0.6, 0.1, 0.1 (all exact bin edges of K = 10).
  # AUC = pairs (pos > neg) + half ties = (3 + 2 + 0.5) / 6 = 11/12.
  # AP: t = 0.9 -> P 1, R 1/2; t = 0.6 -> P 2/3, R 1 -> 1/2 * 1 + 1/2 * 2/3 = 5/6.
  scores = np.array([[0.9, 0.6, 0.6, 0.1, 0.1]])
  masks = np.array([[1, 1, 0, 0, 0]])
  res = _accumulate(scores, masks, np.ones_like(masks), 10)
  assert res["AUC"] == pytest.approx(11 / 12, abs=1e-12)
  assert res["AP"] == pytest.approx(5 / 6, abs=1e-12)
  # At threshold 0.6 (edge 6): TPR 2/2, FPR 1/3, precision 2/3.
  assert res["roc"]["tpr"][6] == 1.0 and res["roc"]["fpr"][6] == pytest.approx(1 / 3)
  assert res["pr"]["precision"][6] == pytest.approx(2 / 3)
  assert (res["roc"]["fpr"][0], res["roc"]["tpr"][0]) == (1.0, 1.0)
  assert (res["roc"]["fpr"][-1], res["roc"]["tpr"][-1]) == (0.0, 0.0)


@pytest.mark.parametrize("num_bins", [16, 256])
def test_curves_match_independent_definitions(num_bins):
  rng = np.random.default_rng(num_bins)
  masks = rng.random((6, 12, 20)) < 0.15
  # Scores quantised to the bin edges (below 1.0, which shares the last bin), positives
  # higher on average.
  q = rng.integers(0, num_bins, size=masks.shape) / num_bins
  scores = np.where(masks, np.maximum(q, rng.integers(0, num_bins, masks.shape) / num_bins), q)
  valids = np.ones_like(masks)
  valids[:, :, 15:] = 0  # padding is ignored
  res = _accumulate(scores, masks, valids, num_bins, chunks=3)
  keep = valids > 0
  pos, neg = scores[keep & masks], scores[keep & ~masks]
  hist = np.stack([np.bincount(np.minimum((x * num_bins).round().astype(int), num_bins - 1),
                               minlength=num_bins) for x in (pos, neg)])
  acc = curves.CurveAccumulator()
  acc.update(curves.score_histograms(_nhwc(scores), _nhwc(masks), _nhwc(valids), num_bins))
  np.testing.assert_array_equal(acc._hist, hist)
  assert res["AUC"] == pytest.approx(_auc_mann_whitney(pos, neg), abs=1e-12)
  assert res["AP"] == pytest.approx(_ap_reference(pos, neg), abs=1e-12)
  assert 0.5 < res["AUC"] < 1.0


def test_f_measure_and_f_area_by_hand():
  # TP 6, FP 3, FN 6: P = 2/3, R = 1/2, F = 1.3 * (1/3) / (0.3 * 2/3 + 1/2) = 13/21.
  assert metrics.f_measure(6, 3, 6) == pytest.approx(13 / 21, rel=1e-12)
  values = curves.summary({"IoU": 0.5, "F-measure": 0.5}, {"AUC": 0.9, "AP": 0.8})
  assert values["F-area"] == pytest.approx(0.4) and values["AUC"] == 0.9


def _eval_config(thresholds):
  return ml_collections.ConfigDict(dict(
      threshold=0.5, distance_threshold=3.0, max_targets=64, max_pixels=1024, num_bins=32,
      roc_thresholds=tuple(thresholds)))


def test_target_roc_equals_reference_at_each_threshold():
  images = _random_images(6, (24, 32), seed=7)
  rng = np.random.default_rng(0)
  preds, gts, valids = (np.stack(x) for x in zip(*images))
  # Scores: predicted pixels high, others low, with noise so thresholds differ.
  scores = np.clip(np.where(preds, 0.6, 0.2) + rng.normal(0, 0.2, preds.shape), 0, 1)
  thresholds = (0.3, 0.5, 0.7)
  cfg = _eval_config(thresholds)
  out = curves.evaluation_outputs(_nhwc(scores), 0.5, _nhwc(scores), _nhwc(gts), _nhwc(valids),
                                  cfg)
  evaluation = curves.Evaluation(cfg)
  evaluation.update(out)
  values, res = evaluation.result()
  for i, t in enumerate(thresholds):
    ref = [_reference_image(s > t, g, v) for s, g, v in zip(scores, gts, valids)]
    pd = sum(r["matched"] for r in ref) / sum(r["targets"] for r in ref)
    fa = sum(r["false_alarm_pixels"] for r in ref) / sum(r["pixels"] for r in ref)
    assert res["target_roc"]["Pd"][i] == pytest.approx(pd, rel=1e-12)
    assert res["target_roc"]["Fa"][i] == pytest.approx(fa, rel=1e-12)
  # The operating point (0.5) agrees with the sweep's 0.5 column.
  assert values["Pd"] == res["target_roc"]["Pd"][1] and values["Fa"] == res["target_roc"]["Fa"][1]
  # F-measure from pixel counts at 0.5, and F-area = AP x F-measure.
  keep = valids > 0
  pred = (scores > 0.5) & keep
  gt = gts & keep
  f = metrics.f_measure((pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum())
  assert values["F-measure"] == pytest.approx(float(f), rel=1e-12)
  assert values["F-area"] == pytest.approx(values["AP"] * values["F-measure"], rel=1e-12)


def test_accumulator_errors_and_streaming_shapes():
  acc = curves.CurveAccumulator((0.5,))
  with pytest.raises(ValueError, match="histograms must be"):
    acc.update(np.zeros((4,)))
  acc.update(np.ones((2, 3, 2, 8)))  # [devices, batch, 2, K]
  with pytest.raises(ValueError, match="8"):
    acc.update(np.ones((2, 4)))
  with pytest.raises(ValueError, match="thresholds"):
    acc.update(sweep={k: np.zeros((2, 3)) for k in curves._SWEEP_KEYS})
  assert acc.result()["roc"]["tpr"][0] == 1.0
  with pytest.raises(ValueError, match="num_bins"):
    curves.score_histograms(np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 1)),
                            np.zeros((1, 2, 2, 1)), 0)


def test_format_table():
  row = {"IoU": 0.5, "nIoU": 0.25, "Pd": 1.0, "Fa": 2.5e-6, "AUC": 0.9, "AP": 0.8,
         "F-measure": 0.5, "F-area": 0.4}
  text = tables.markdown_table({"m": row})
  assert "| m | 0.5000 | 0.2500 | 1.0000 | 2.50 | 0.9000 | 0.8000 | 0.5000 | 0.4000 |" in text
  assert "Fa (x1e-6)" in text
