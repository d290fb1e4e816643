"""Threshold sweeps of IRSTD evaluation: pixel ROC / AUC, PR / AP, target-level ROC, F-area.

One pass over the data accumulates, per batch and on device:

* :func:`score_histograms`: fixed-bin histograms (``num_bins``, default 256, config
  ``eval.num_bins``) of the scores in [0, 1] of the valid positive (ground truth) and
  negative pixels.  Bin ``k`` holds scores in ``[k/K, (k+1)/K)`` (score 1 in the last bin).
  Sweeping the threshold over the bin edges ``t_k = k/K`` (prediction ``score >= t_k``)
  gives, for every ``k``, exact TP/FP/FN/TN counts of the scores quantised to the bins:
  ``TP(t_k) = sum_{j >= k} pos[j]``.
* :func:`irst_jax.evaluation.metrics.sweep_statistics` at a few thresholds (config
  ``eval.roc_thresholds``, or the evaluation protocol's own, :func:`sweep_thresholds`): Pd
  and Fa per threshold (target-level ROC, DNA-Net Sec. V-A4).

:class:`CurveAccumulator` sums both on the host (any leading shape: batches, devices) and
:meth:`CurveAccumulator.result` returns

* pixel ROC (EAAU-Net eq. 14): TPR = TP / (TP + FN), FPR = FP / (FP + TN) at the ``K + 1``
  bin edges (``t = 0`` gives (1, 1), ``t > 1`` gives (0, 0)); ``AUC`` by the trapezoidal rule;
* PR curve (EAAU-Net eq. 13) and ``AP`` = sum over thresholds of (R_k - R_{k+1}) P_k
  (step-wise, no interpolation, as scikit-learn's ``average_precision_score``; thresholds
  with no prediction have no precision and contribute nothing);
* the target-level ROC: ``Pd`` and ``Fa`` (fraction, x1e-6 when printed) per threshold.

F-measure (EAAU-Net eq. 15, beta^2 = 0.3) at the operating threshold comes from
:class:`irst_jax.evaluation.metrics.MetricAccumulator`; ``F-area = AP x F-measure`` (eq. 16)
is formed by :func:`summary`.
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from irst_jax.evaluation import metrics, protocols

__all__ = ["score_histograms", "CurveAccumulator", "summary", "evaluation_outputs", "Evaluation",
           "roc_thresholds", "sweep_thresholds"]

_SWEEP_KEYS = ("targets", "matched", "false_alarm_pixels", "pixels", "target_overflow")


def score_histograms(scores: jax.Array, mask: jax.Array, valid: jax.Array,
                     num_bins: int = 256) -> jax.Array:
  """Histograms of the scores of positive and negative valid pixels (jit-compatible).

  Args:
    scores: ``[B, H, W, 1]`` scores in [0, 1] (e.g. sigmoid probabilities); values
      outside are clipped into the first / last bin.
    mask: ``[B, H, W, 1]`` ground truth (``> 0`` is positive).
    valid: ``[B, H, W, 1]`` 1 on original pixels, 0 on padding (not counted).
    num_bins: number of bins ``K`` (static).

  Returns:
    int32 ``[2, K]``: row 0 positives, row 1 negatives, summed over the batch (exact while
    a batch holds fewer than 2**31 pixels).

  Raises:
    ValueError: shapes differ or ``num_bins < 1``.
  """
  shapes = {jnp.shape(scores), jnp.shape(mask), jnp.shape(valid)}
  if len(shapes) != 1:
    raise ValueError(f"scores, mask, valid must have the same shape, got {shapes}")
  if int(num_bins) < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}")
  return _score_histograms(scores, mask, valid, num_bins=int(num_bins))


@functools.partial(jax.jit, static_argnames=("num_bins",))
def _score_histograms(scores, mask, valid, *, num_bins):
  k = jnp.clip(jnp.floor(scores * num_bins), 0, num_bins - 1).astype(jnp.int32)
  index = jnp.where(mask > 0, k, k + num_bins).reshape(-1)
  weight = (valid > 0).astype(jnp.int32).reshape(-1)
  return jnp.zeros((2 * num_bins,), jnp.int32).at[index].add(weight).reshape(2, num_bins)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
  return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


class CurveAccumulator:
  """Host-side float64 sums of :func:`score_histograms` and threshold-sweep statistics.

  Args:
    thresholds: the score thresholds of the target-level sweep (as passed to
      :func:`irst_jax.evaluation.metrics.sweep_statistics`), or ``()`` for none.
  """

  def __init__(self, thresholds=()):
    self.thresholds = np.asarray(thresholds, np.float64).reshape(-1)
    self.reset()

  def reset(self) -> None:
    self._hist = None
    self._sweep = {k: np.zeros(len(self.thresholds)) for k in _SWEEP_KEYS}

  def update(self, histograms=None, sweep: Mapping[str, jax.Array] | None = None) -> None:
    """Adds histograms ``[..., 2, K]`` and/or sweep statistics (dict of ``[..., T, B]``).

    Raises:
      ValueError: histograms with another bin count than before, sweep arrays whose
        threshold axis is not ``len(thresholds)``, or an image with more true targets than
        ``max_targets`` (nothing of that call is accumulated then).
    """
    if sweep is not None:
      arrs = {k: np.asarray(jax.device_get(sweep[k]), np.float64) for k in _SWEEP_KEYS}
      t = len(self.thresholds)
      for k, a in arrs.items():
        if a.ndim < 2 or a.shape[-2] != t:
          raise ValueError(f"sweep statistic {k!r} has shape {a.shape}; expected [..., {t}, B] "
                           f"for the {t} thresholds")
      arrs = {k: np.moveaxis(a, -2, 0).reshape(t, -1).sum(axis=1) for k, a in arrs.items()}
      if np.any(arrs["target_overflow"] > 0):
        raise ValueError("an image has more true targets than max_targets; raise "
                         "eval.max_targets so that Pd/Fa stay exact")
    if histograms is not None:
      h = np.asarray(jax.device_get(histograms), np.float64)
      if h.ndim < 2 or h.shape[-2] != 2:
        raise ValueError(f"histograms must be [..., 2, K], got shape {h.shape}")
      h = h.reshape(-1, 2, h.shape[-1]).sum(axis=0)
      if self._hist is not None and self._hist.shape != h.shape:
        raise ValueError(f"histograms have {h.shape[-1]} bins, earlier ones "
                         f"{self._hist.shape[-1]}")
      self._hist = h if self._hist is None else self._hist + h
    if sweep is not None:
      for k in _SWEEP_KEYS:
        self._sweep[k] += arrs[k]

  def result(self) -> dict:
    """Curves and areas (numpy arrays; NaN where a denominator is 0).

    Returns a dict with ``roc`` {``thresholds`` [K+1] bin edges, ``fpr``, ``tpr``},
    ``pr`` {``thresholds``, ``precision``, ``recall``}, ``AUC``, ``AP``, and
    ``target_roc`` {``thresholds`` [T], ``Pd``, ``Fa``}.
    """
    out: dict = {}
    if self._hist is not None:
      pos, neg = self._hist
      k = pos.shape[0]
      # Counts predicted positive at threshold t_j = j / K, j = 0..K (cumulative from the top).
      tp = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])
      fp = np.concatenate([np.cumsum(neg[::-1])[::-1], [0.0]])
      p_all, n_all = pos.sum(), neg.sum()
      with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / p_all
        fpr = fp / n_all
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
      recall = tpr
      edges = np.arange(k + 1) / k
      # Points from the highest threshold to the lowest for the areas.
      auc = _trapezoid(tpr[::-1], fpr[::-1]) if p_all > 0 and n_all > 0 else float("nan")
      r_next = np.concatenate([recall[1:], [0.0]])
      defined = np.isfinite(precision)
      ap = (float(np.sum(((recall - r_next) * np.where(defined, precision, 0.0))))
            if p_all > 0 else float("nan"))
      out.update(roc={"thresholds": edges, "fpr": fpr, "tpr": tpr},
                 pr={"thresholds": edges, "precision": precision, "recall": recall},
                 AUC=auc, AP=ap)
    if len(self.thresholds):
      s = self._sweep
      with np.errstate(invalid="ignore", divide="ignore"):
        out["target_roc"] = {"thresholds": self.thresholds.copy(),
                             "Pd": s["matched"] / s["targets"],
                             "Fa": s["false_alarm_pixels"] / s["pixels"]}
    return out


def summary(metric_result: Mapping[str, float], curve_result: Mapping) -> dict[str, float]:
  """The table's numbers: the operating point's IoU, nIoU, Pd, Fa, F-measure (from
  :class:`irst_jax.evaluation.metrics.MetricAccumulator`), AUC and AP of the curves, and
  ``F-area = AP x F-measure`` (EAAU-Net eq. 16); the columns of
  :func:`irst_jax.evaluation.tables.markdown_table`."""
  out = {k: float(v) for k, v in metric_result.items()}
  out["AUC"] = float(curve_result.get("AUC", float("nan")))
  out["AP"] = float(curve_result.get("AP", float("nan")))
  out["F-area"] = out["AP"] * out["F-measure"]
  return out


def roc_thresholds(eval_config) -> np.ndarray:
  """The target-level sweep's score thresholds of an ``eval`` config section."""
  return np.asarray(tuple(eval_config.roc_thresholds), np.float32)


def sweep_thresholds(eval_config, values_units: str = "logits") -> tuple[np.ndarray, bool]:
  """(thresholds, on ``values``) of the target-level sweep of an ``eval`` config section:
  the protocol's own sweep on the thresholded map ``values`` in its units (``"logits"`` or
  ``"scores"``; :mod:`irst_jax.evaluation.protocols`), else ``eval.roc_thresholds`` on the
  sigmoid ``scores``."""
  own = protocols.get(eval_config).sweep_thresholds(values_units)
  return (roc_thresholds(eval_config), False) if own is None else (own, True)


def evaluation_outputs(values: jax.Array, threshold: float, scores: jax.Array, mask: jax.Array,
                       valid: jax.Array, eval_config, *, curves: bool = True,
                       values_units: str = "logits") -> dict:
  """Everything one batch contributes to an evaluation (jit/pmap-compatible).

  The protocol of ``eval_config`` (``eval.protocol``, :mod:`irst_jax.evaluation.protocols`)
  sets the false alarm rule and, where it has its own (``dnanet``), the target-level sweep:
  thresholds on ``values`` in ``values_units`` instead of ``eval.roc_thresholds`` on
  ``scores``.  Resizing (``dnanet``) is done on the batch before the network
  (:func:`irst_jax.evaluation.protocols.network_batch`), not here.

  Args:
    values: ``[B, H, W, 1]`` map thresholded at ``threshold`` for the operating point
      (logits with a logit threshold, or scores with a score threshold; a baseline passes
      ``G - T`` with its per-image adaptive threshold ``T`` and 0).
    threshold: static operating threshold in the units of ``values``.
    scores: ``[B, H, W, 1]`` scores in [0, 1] for the curves.
    mask, valid: ``[B, H, W, 1]`` ground truth and validity.
    eval_config: the ``eval`` config section (``distance_threshold``, ``max_targets``,
      ``max_pixels``, ``num_bins``, ``roc_thresholds``, ``protocol``).
    curves: also compute the histograms and the target-level sweep (the sweep only when
      ``roc_thresholds`` is not empty: it labels components at every threshold, the
      costliest part of an evaluation; it shares each image's compaction with the
      operating point, :func:`irst_jax.evaluation.metrics.operating_point_and_sweep_statistics`).
    values_units: ``"logits"`` (network outputs) or ``"scores"`` (maps in [0, 1]): the units
      of a protocol's own sweep.

  Returns:
    ``{'stats': per-image statistics [B]}``, plus ``'hist'`` [2, K] and ``'sweep'``
    (dict of [T, B]) when ``curves``.
  """
  common = dict(distance_threshold=float(eval_config.distance_threshold),
                max_targets=int(eval_config.max_targets), max_pixels=eval_config.max_pixels,
                fa_rule=protocols.get(eval_config).fa_rule)
  thresholds, on_values = sweep_thresholds(eval_config, values_units)
  if curves and len(thresholds):
    stats, sweep = metrics.operating_point_and_sweep_statistics(
        values, threshold, values if on_values else scores, mask, valid, thresholds, **common)
    out = {"stats": stats, "sweep": sweep}
  else:
    out = {"stats": metrics.batch_statistics(values, mask, valid, threshold=threshold, **common)}
  if curves:
    out["hist"] = score_histograms(scores, mask, valid, int(eval_config.num_bins))
  return out


class Evaluation:
  """Host-side accumulation of :func:`evaluation_outputs` (any leading shape); ``values_units``
  as given to :func:`evaluation_outputs` (the thresholds recorded in ``target_roc``)."""

  def __init__(self, eval_config, values_units: str = "logits"):
    self.metrics = metrics.MetricAccumulator()
    self.curves = CurveAccumulator(sweep_thresholds(eval_config, values_units)[0])

  def update(self, outputs: Mapping) -> None:
    self.metrics.update(outputs["stats"])
    if "hist" in outputs:
      self.curves.update(outputs["hist"], outputs.get("sweep"))

  def result(self) -> tuple[dict[str, float], dict]:
    """(table numbers of :func:`summary`, curves of :meth:`CurveAccumulator.result`)."""
    curves = self.curves.result()
    return summary(self.metrics.result(), curves), curves
