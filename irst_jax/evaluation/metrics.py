"""Evaluation metrics of single-frame infrared small target detection (IRSTD).

The four numbers the field reports, computed exactly as the reference evaluation
code does, but as jit-compatible ``jax.numpy`` reductions that stream over batches
and devices:

* **IoU** (called mIoU for the single target class): dataset level,
  ``sum_i intersection_i / sum_i union_i`` (open-acm ``SigmoidMetric``, BasicIRSTD
  ``mIoU``).
* **nIoU** (ACM paper, Dai et al. 2021, eq. 1; open-acm ``SamplewiseSigmoidMetric``):
  mean over images of ``intersection_i / (eps + union_i)`` with
  ``eps = np.spacing(1)``, so an image with neither target nor prediction
  contributes 0.
* **Pd / Fa** (DNA-Net paper, Li et al. 2022, eqs. 12-13; BasicIRSTD ``PD_FA``):
  the true and predicted masks are labelled into 8-connected components
  (``skimage.measure.label(connectivity=2)``; :mod:`irst_jax.evaluation.components`);
  centroids are the mean (row, col) of each component (``regionprops``).  For each true
  component, in label order, the first not-yet-matched predicted component (in label
  order) whose centroid lies at Euclidean distance ``< 3`` pixels is matched and removed.
  ``Pd = matched true targets / true targets``;
  ``Fa = predicted pixels outside matched predicted components / all pixels``
  (pixels of all test images at original size).  Fa is returned as a plain
  fraction; the field prints it multiplied by 1e6 ("x1e-6").

  Two rules for the false alarm pixels (``fa_rule``, static):

  - ``"pixels"`` (default; BasicIRSTD ``metrics.py`` since its 2024-01-25 change): every
    predicted pixel outside the matched predicted components.
  - ``"area"`` (BasicIRSTD ``metrics.py`` before 2024-01-25, the official DNA-Net
    ``model/metric.py``): the reference lists the areas of all predicted components and of
    the matched ones and sums ``[x for x in areas if x not in matched_areas]``, so every
    predicted component, matched or not, whose area equals the area of some matched
    component of the same image is left out.  Computed here from the same component tables:
    the matching records the matched areas (at most ``max_targets``), and a component counts
    when its area is none of them.

  The evaluation protocols that choose between them are in
  :mod:`irst_jax.evaluation.protocols`.

Everything is evaluated on the maps given, at the original image size by default (the
``dnanet`` protocol resizes them first): images are zero padded to a multiple of 32 for the
network and a ``valid`` mask (1 on original pixels, 0 on
padding) is multiplied into both prediction and ground truth, and only valid pixels
are counted in ``pixels``.  Layout is NHWC with a single channel.

Device side: :func:`batch_statistics` returns per-image sums (float32, shape
``[B]``).  Host side: :class:`MetricAccumulator` sums them in float64 and produces
the final numbers.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from irst_jax.evaluation.components import _segment_scan, _slot_labels, _slots, connected_components

__all__ = [
    "batch_statistics",
    "sweep_statistics",
    "operating_point_and_sweep_statistics",
    "detection_maps",
    "f_measure",
    "MetricAccumulator",
    "STAT_KEYS",
    "FA_RULES",
]

STAT_KEYS = (
    "intersection",
    "union",
    "pixels",
    "predicted",
    "targets",
    "matched",
    "false_alarm_pixels",
    "target_overflow",
)

#: False alarm rules of :func:`batch_statistics` (see the module docstring).
FA_RULES = ("pixels", "area")


# --------------------------------------------------------------------------- #
# Per-image statistics
# --------------------------------------------------------------------------- #
def _table(area, rsum, csum):
  """(area, mean row, mean col) per segment from exact integer sums."""
  safe = jnp.maximum(area, 1)
  fsafe = safe.astype(jnp.float32)

  def mean(total):  # integer part exact, only the fraction is rounded
    return (total // safe).astype(jnp.float32) + (total % safe).astype(jnp.float32) / fsafe

  return area, mean(rsum), mean(csum)


def _dense_table(mask: jax.Array):
  """Component table over the label space (segment l <-> label l; segment 0 emptied).

  Also returns the per-pixel labels.  Integer coordinate sums are exact while
  ``H*W*max(H, W) < 2**31`` (images up to ~1290^2).
  """
  labels = connected_components(mask)
  h, w = labels.shape
  seg = labels.reshape(-1)
  rows = jnp.broadcast_to(jnp.arange(h, dtype=jnp.int32)[:, None], (h, w)).reshape(-1)
  cols = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32)[None, :], (h, w)).reshape(-1)
  sums = [jax.ops.segment_sum(x, seg, num_segments=h * w + 1)
          for x in (jnp.ones_like(seg), rows, cols)]
  area, r, c = _table(*sums)
  return (area.at[0].set(0), r, c), labels


def _slot_table(labels, fg, rows, cols):
  """Component table indexed by root slot of the slots with ``fg``."""
  size = labels.shape[0]
  seg = jnp.where(fg, labels, size)  # other slots -> dropped segment
  return _table(*[jax.ops.segment_sum(x, seg, num_segments=size)
                  for x in (fg.astype(jnp.int32), rows, cols)])


def _greedy_match(table_t, table_p, distance_threshold: float, max_targets: int):
  """Greedy centroid matching of DNA-Net eqs. 12-13 / BasicIRSTD ``PD_FA``.

  Tables are (area, mean row, mean col) over segments; a segment with area > 0 is a
  component and increasing segment index is label order.  Returns (matched flag per true
  segment, taken flag per predicted segment, number of true components, int32
  ``[max_targets]`` areas of the matched predicted components in matching order, 0 where
  a true target found none or beyond the image's targets).
  """
  area_t, r_t, c_t = table_t
  area_p, r_p, c_p = table_p
  is_t = area_t > 0
  is_p = area_p > 0
  targets = jnp.sum(is_t, dtype=jnp.int32)
  seg_t = jnp.arange(area_t.shape[0], dtype=jnp.int32)
  seg_p = jnp.arange(area_p.shape[0], dtype=jnp.int32)
  thr2 = jnp.float32(distance_threshold) ** 2

  # Sequential over the true targets exactly like the reference loops; the loop stops
  # after the image's last true target (under vmap: the batch's largest count).
  def match_one(carry):
    k, prev, taken, matched, areas = carry
    t = jnp.argmax(is_t & (seg_t > prev)).astype(jnp.int32)  # next true component
    dr = r_p - r_t[t]
    dc = c_p - c_t[t]
    ok = is_p & ~taken & (dr * dr + dc * dc < thr2)
    hit = jnp.any(ok)
    first = jnp.argmax(ok)  # smallest label satisfying the condition
    taken = taken | ((seg_p == first) & hit)
    matched = matched | ((seg_t == t) & hit)
    areas = areas.at[k].set(jnp.where(hit, area_p[first], 0).astype(jnp.int32))
    return k + 1, t, taken, matched, areas

  n_loop = jnp.minimum(targets, max_targets)
  init = (jnp.array(0, jnp.int32), jnp.array(-1, jnp.int32), jnp.zeros(area_p.shape, bool),
          jnp.zeros(area_t.shape, bool), jnp.zeros((max_targets,), jnp.int32))
  _, _, taken, matched, areas = jax.lax.while_loop(lambda c: c[0] < n_loop, match_one, init)
  return matched, taken, targets, areas


def _false_alarm_pixels(pred_pixels, table_p, taken, matched_areas, fa_rule):
  """False alarm pixels of one prediction by ``fa_rule`` (module docstring)."""
  area = table_p[0]
  if fa_rule == "pixels":
    return pred_pixels - jnp.sum(jnp.where(taken, area, 0)).astype(jnp.float32)
  # "area": `[x for x in image_area_total if x not in image_area_match]` of the reference;
  # unused entries of matched_areas are 0, which no component's area equals.
  same = jnp.any(area[:, None] == matched_areas[None, :], axis=1)
  return jnp.sum(jnp.where((area > 0) & ~same, area, 0)).astype(jnp.float32)


def _counts(pred_pixels, intersection, union, pixels, table_p, match, max_targets, fa_rule):
  matched, taken, targets, matched_areas = match
  out = {
      "intersection": intersection,
      "union": union,
      "pixels": pixels,
      "predicted": pred_pixels,
      "targets": targets,
      "matched": jnp.sum(matched, dtype=jnp.int32),
      "false_alarm_pixels": _false_alarm_pixels(pred_pixels, table_p, taken, matched_areas,
                                                fa_rule),
      "target_overflow": targets > max_targets,
  }
  return {k: v.astype(jnp.float32) for k, v in out.items()}


def _image_statistics(pred: jax.Array, gt: jax.Array, valid: jax.Array, *,
                      distance_threshold: float, max_targets: int, fa_rule: str = "pixels"
                      ) -> dict[str, jax.Array]:
  """Statistics of one image on the dense path (labels over the whole image)."""
  (table_t, _), (table_p, _) = _dense_table(gt), _dense_table(pred)
  match = _greedy_match(table_t, table_p, distance_threshold, max_targets)
  # Pixel counts as float32 sums (exact below 2**24 pixels an image; XLA:CPU sums float32
  # an order of magnitude faster than bool).
  p, g = pred.astype(jnp.float32), gt.astype(jnp.float32)
  return _counts(jnp.sum(p), jnp.sum(p * g), jnp.sum(jnp.maximum(p, g)),
                 jnp.sum(valid.astype(jnp.float32)), table_p, match, max_targets, fa_rule)


def _image_sweep(score, gt, valid, thresholds, op_pred, *, distance_threshold, max_targets,
                 max_pixels, fa_rule="pixels"):
  """Statistics of one image at every threshold (``score > t``) and, if ``op_pred`` is
  given, of that prediction too (last row), on the compacted path.

  The image is read once: the support ``(score > min(thresholds)) | op_pred | gt`` (a
  superset of every prediction and of the ground truth) is compacted, and the ground truth
  and each prediction label and count only the compacted pixels.  Returns (dict of
  ``[T]`` or ``[T + 1]``, overflow flag).
  """
  support = (score > jnp.min(thresholds)) | gt
  if op_pred is not None:
    support = support | op_pred
  support = support & valid
  occupied, pixels = _segment_scan(support, valid)
  idx, rows, cols, present, neighbours, count = _slots(support, occupied, max_pixels)
  n = score.size
  at = jnp.minimum(idx, n - 1)
  g_slot = gt.reshape(-1)[at] & present
  gt_pixels = jnp.sum(g_slot.astype(jnp.float32))
  fgs = present & (score.reshape(-1)[at][None, :] > thresholds[:, None])   # [T, P]
  if op_pred is not None:
    fgs = jnp.concatenate([fgs, (present & op_pred.reshape(-1)[at])[None]])
  # The ground truth is labelled in the same (vmapped) loop as the predictions.
  labels = jax.vmap(_slot_labels, in_axes=(0, None))(
      jnp.concatenate([g_slot[None], fgs]), neighbours)
  table_t = _slot_table(labels[0], g_slot, rows, cols)

  def one(fg, fg_labels):
    table_p = _slot_table(fg_labels, fg, rows, cols)
    match = _greedy_match(table_t, table_p, distance_threshold, max_targets)
    predicted = jnp.sum(fg.astype(jnp.float32))
    inter = jnp.sum((fg & g_slot).astype(jnp.float32))
    return _counts(predicted, inter, predicted + gt_pixels - inter, pixels, table_p, match,
                   max_targets, fa_rule)

  return jax.vmap(one)(fgs, labels[1:]), count > max_pixels


def _sweep_batch(scores, mask, valid, thresholds, values=None, threshold=None, *,
                 distance_threshold, max_targets, max_pixels, fa_rule="pixels"):
  """Statistics ``[T, B]`` of the predictions ``scores > t``, and ``[T + 1, B]`` with the
  operating prediction ``values > threshold`` as last row, for ground truth ``mask > 0``;
  inputs ``[B, H, W, 1]``, each comparison made on pixels with ``valid > 0`` only.

  Compacted path at capacity ``max_pixels // 4`` first (its work scales with the capacity;
  IRSTD masks are a few dozen pixels), then at ``max_pixels``; if any image of the call
  overflows that too, the call is redone on the dense path.  Each fallback is a real
  ``lax.cond`` outside the vmap, run only when needed, so results are always exact.  The
  comparisons are made per image inside each path: the raw inputs, not boolean copies of
  them that XLA would materialise, are the operands of the conds.
  """
  kw = dict(distance_threshold=distance_threshold, max_targets=max_targets, fa_rule=fa_rule)
  inputs = (scores, mask, valid) + ((values,) if values is not None else ())

  def booleans(s, m, v, op=None):  # one image's [H, W, 1] inputs -> score, gt, valid, op
    v = v[..., 0] > 0
    return (s[..., 0].astype(jnp.float32), (m[..., 0] > 0) & v, v,
            None if op is None else (op[..., 0] > threshold) & v)

  def dense():
    def per_image(*image):
      s, g, v, op = booleans(*image)
      stats = jax.vmap(lambda t: _image_statistics((s > t) & v, g, v, **kw))(thresholds)
      if op is None:
        return stats
      last = _image_statistics(op, g, v, **kw)
      return {k: jnp.concatenate([stats[k], last[k][None]]) for k in stats}
    # One image at a time: a vmap would size XLA's temporary buffer for the whole batch
    # (176 MB for 32 images of 256x256), allocated at every call even when this fallback
    # does not run, which costs the fast path ~20 % in page faults.
    return jax.lax.map(lambda image: per_image(*image), inputs)

  def compacted(capacities):
    def per_image(*image):
      s, g, v, op = booleans(*image)
      return _image_sweep(s, g, v, thresholds, op, max_pixels=capacities[0], **kw)
    stats, overflow = jax.vmap(per_image)(*inputs)
    fallback = functools.partial(compacted, capacities[1:]) if capacities[1:] else dense
    return jax.lax.cond(jnp.any(overflow), fallback, lambda: stats)

  if max_pixels is None:
    stats = dense()
  else:
    stats = compacted((max_pixels // 4, max_pixels) if max_pixels >= 64 else (max_pixels,))
  return {k: v.T for k, v in stats.items()}  # [B, T] -> [T, B]


def _check_nhwc(*arrays) -> None:
  shapes = {jnp.shape(a) for a in arrays}
  if len(shapes) != 1:
    raise ValueError(f"inputs must have the same shape, got {shapes}")
  shape = jnp.shape(arrays[0])
  if len(shape) != 4 or shape[-1] != 1:
    raise ValueError(f"expected [B, H, W, 1] (NHWC, one channel), got {shape}")


def batch_statistics(logits: jax.Array, mask: jax.Array, valid: jax.Array, *,
                     threshold: float = 0.0, distance_threshold: float = 3.0,
                     max_targets: int = 32, max_pixels: int | None = 1024,
                     fa_rule: str = "pixels") -> dict[str, jax.Array]:
  """Per-image sufficient statistics for IoU, nIoU, Pd, Fa and F-measure (jit-compatible).

  Layout NHWC.  Prediction is ``logits > threshold`` (``threshold = 0`` is
  sigmoid 0.5; any score map works with a threshold in its own units), ground truth is
  ``mask > 0``; both are multiplied by ``valid`` first, so zero padding never counts.
  Components use 8-connectivity; a true target is matched to the first not-yet-matched
  predicted component (label order) whose centroid is closer than ``distance_threshold``
  pixels (strict ``<``), true targets processed in label order (DNA-Net eqs. 12-13,
  BasicIRSTD ``PD_FA``).  Only the first ``max_targets`` true components of an image are
  matched; ``target_overflow`` flags images with more (the accumulator then raises).
  Predicted components are not capped.

  Labelling runs on the compacted foreground (:func:`irst_jax.evaluation.components.compact_components`,
  capacity ``max_pixels // 4``, then ``max_pixels`` foreground pixels per mask); if any mask of
  the call has more, the call falls back to dense labelling
  (:func:`irst_jax.evaluation.components.connected_components`), so
  the result never depends on ``max_pixels`` (``None`` forces the dense path), only the
  speed does.

  Centroid distances are computed in float32 from exact int32 coordinate sums
  (valid while ``H * W * max(H, W) < 2**31``, i.e. images up to ~1290x1290);
  they can only disagree with the float64 reference for distances within
  ~1e-5 px of the threshold, where the reference's own rounding decides.

  Args:
    logits: ``[B, H, W, 1]`` raw network outputs (pre-sigmoid) or scores.
    mask: ``[B, H, W, 1]`` ground truth, values in {0, 1}.
    valid: ``[B, H, W, 1]`` 1 on original image pixels, 0 on padding.
    threshold: threshold in the units of ``logits``.
    distance_threshold: centroid distance in pixels.
    max_targets: static cap on true components matched per image.
    max_pixels: static capacity of the compacted labelling, or ``None``.
    fa_rule: ``"pixels"`` or ``"area"`` (static; module docstring): which predicted pixels
      ``false_alarm_pixels`` counts.

  Returns:
    dict of float32 arrays of shape ``[B]`` (all counts in pixels or
    components): ``intersection``, ``union``, ``pixels`` (valid pixels),
    ``predicted`` (predicted pixels), ``targets`` (true components), ``matched``
    (matched true components), ``false_alarm_pixels`` (``"pixels"``: predicted pixels
    outside matched predicted components; ``"area"``: pixels of the predicted components
    whose area is no matched component's area), ``target_overflow`` (1.0 if
    ``targets > max_targets``).

  Raises:
    ValueError: if the inputs are not ``[B, H, W, 1]`` of the same shape, or an unknown
      ``fa_rule``.
  """
  _check_nhwc(logits, mask, valid)
  return _batch_statistics(logits, mask, valid, threshold=float(threshold),
                           distance_threshold=float(distance_threshold),
                           max_targets=int(max_targets), max_pixels=max_pixels,
                           fa_rule=_check_fa_rule(fa_rule))


def _check_fa_rule(fa_rule: str) -> str:
  if fa_rule not in FA_RULES:
    raise ValueError(f"fa_rule={fa_rule!r}: expected one of {list(FA_RULES)}")
  return fa_rule


@functools.partial(jax.jit, static_argnames=("threshold", "distance_threshold", "max_targets",
                                             "max_pixels", "fa_rule"))
def _batch_statistics(logits, mask, valid, *, threshold, distance_threshold, max_targets,
                      max_pixels, fa_rule):
  stats = _sweep_statistics(logits, mask, valid, jnp.array([threshold], jnp.float32),
                            distance_threshold=distance_threshold, max_targets=max_targets,
                            max_pixels=max_pixels, fa_rule=fa_rule)
  return {k: v[0] for k, v in stats.items()}


def sweep_statistics(scores: jax.Array, mask: jax.Array, valid: jax.Array,
                     thresholds: jax.Array, *, distance_threshold: float = 3.0,
                     max_targets: int = 32, max_pixels: int | None = 1024,
                     fa_rule: str = "pixels") -> dict[str, jax.Array]:
  """:func:`batch_statistics` at several thresholds at once (target-level ROC).

  Prediction at threshold ``t`` is ``scores > t``; everything else is as in
  :func:`batch_statistics` (the same code, vmapped over the thresholds).

  Args:
    scores: ``[B, H, W, 1]`` scores (e.g. sigmoid probabilities).
    mask, valid: ``[B, H, W, 1]`` as in :func:`batch_statistics`.
    thresholds: ``[T]`` thresholds in the units of ``scores``.

  Returns:
    dict of float32 arrays of shape ``[T, B]`` with the keys of :func:`batch_statistics`.

  Raises:
    ValueError: bad shapes (inputs not ``[B, H, W, 1]`` alike, thresholds not 1-D), an
      unknown ``fa_rule``.
  """
  _check_nhwc(scores, mask, valid)
  if jnp.ndim(thresholds) != 1:
    raise ValueError(f"thresholds must be 1-D [T], got shape {jnp.shape(thresholds)}")
  return _sweep_statistics(scores, mask, valid, jnp.asarray(thresholds, jnp.float32),
                           distance_threshold=float(distance_threshold),
                           max_targets=int(max_targets), max_pixels=max_pixels,
                           fa_rule=_check_fa_rule(fa_rule))


@functools.partial(jax.jit, static_argnames=("distance_threshold", "max_targets", "max_pixels",
                                             "fa_rule"))
def _sweep_statistics(scores, mask, valid, thresholds, *, distance_threshold, max_targets,
                      max_pixels, fa_rule="pixels"):
  return _sweep_batch(scores, mask, valid, thresholds, distance_threshold=distance_threshold,
                      max_targets=max_targets, max_pixels=max_pixels, fa_rule=fa_rule)


def operating_point_and_sweep_statistics(
    values: jax.Array, threshold: float, scores: jax.Array, mask: jax.Array, valid: jax.Array,
    thresholds: jax.Array, *, distance_threshold: float = 3.0, max_targets: int = 32,
    max_pixels: int | None = 1024, fa_rule: str = "pixels"
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """:func:`batch_statistics` of ``values > threshold`` and :func:`sweep_statistics` of
  ``scores`` in one pass: each image's support (the union of every prediction and the
  ground truth) is compacted and its ground truth labelled once for both.

  Equal to calling the two functions (tested); ``values`` and ``scores`` may be different
  maps (logits and sigmoid scores, or a baseline's ``G - T`` and ``G / max G``).

  Returns:
    (dict of ``[B]`` as :func:`batch_statistics`, dict of ``[T, B]`` as
    :func:`sweep_statistics`).

  Raises:
    ValueError: bad shapes (inputs not ``[B, H, W, 1]`` alike, thresholds not 1-D), an
      unknown ``fa_rule``.
  """
  _check_nhwc(values, scores, mask, valid)
  if jnp.ndim(thresholds) != 1:
    raise ValueError(f"thresholds must be 1-D [T], got shape {jnp.shape(thresholds)}")
  stats = _operating_point_and_sweep(
      values, scores, mask, valid, jnp.asarray(thresholds, jnp.float32),
      threshold=float(threshold), distance_threshold=float(distance_threshold),
      max_targets=int(max_targets), max_pixels=max_pixels, fa_rule=_check_fa_rule(fa_rule))
  return {k: v[-1] for k, v in stats.items()}, {k: v[:-1] for k, v in stats.items()}


@functools.partial(jax.jit, static_argnames=("threshold", "distance_threshold", "max_targets",
                                             "max_pixels", "fa_rule"))
def _operating_point_and_sweep(values, scores, mask, valid, thresholds, *, threshold,
                               distance_threshold, max_targets, max_pixels, fa_rule):
  return _sweep_batch(scores, mask, valid, thresholds, values, threshold,
                      distance_threshold=distance_threshold, max_targets=max_targets,
                      max_pixels=max_pixels, fa_rule=fa_rule)


def detection_maps(pred: jax.Array, gt: jax.Array, *, distance_threshold: float = 3.0,
                   max_targets: int = 32) -> dict[str, jax.Array]:
  """Per-pixel outcome of the Pd/Fa matching of one image (for qualitative figures).

  Args:
    pred: ``[H, W]`` bool prediction (already restricted to valid pixels).
    gt: ``[H, W]`` bool ground truth.

  Returns:
    dict of ``[H, W]`` bool maps: ``detected`` (pixels of matched predicted components),
    ``false_alarm`` (other predicted pixels), ``missed`` (pixels of unmatched true targets).
  """
  table_t, lab_t = _dense_table(gt)
  table_p, lab_p = _dense_table(pred)
  matched, taken, _, _ = _greedy_match(table_t, table_p, float(distance_threshold),
                                       int(max_targets))
  detected = taken[lab_p] & pred
  return {"detected": detected, "false_alarm": pred & ~detected,
          "missed": gt & ~matched[lab_t]}


def f_measure(tp, fp, fn, beta2: float = 0.3):
  """F-measure of EAAU-Net eq. 15, ``(1 + b2) P R / (b2 P + R)`` with ``b2 = beta^2 = 0.3``.

  Written as ``(1 + b2) TP / ((1 + b2) TP + b2 FN + FP + eps)`` (the same value, defined
  when P or R is 0/0), ``eps = np.spacing(1)``; works on numbers and numpy arrays of pixel
  counts.
  """
  tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
  return (1 + beta2) * tp / ((1 + beta2) * tp + beta2 * fn + fp + np.spacing(1))


# --------------------------------------------------------------------------- #
# Host-side accumulation
# --------------------------------------------------------------------------- #
class MetricAccumulator:
    """Streaming float64 sums of :func:`batch_statistics` outputs (host side).

    ``update`` accepts the dict with any leading shape (``[B]``, ``[devices, B]``,
    ...).  Images with ``pixels == 0`` (dummy examples padding the last batch) are
    ignored.  ``result`` returns

    * ``IoU``  = sum intersection / (eps + sum union)
    * ``nIoU`` = mean over images of intersection / (eps + union)  (ACM eq. 1)
    * ``Pd``   = sum matched / sum targets              (DNA-Net eq. 12)
    * ``Fa``   = sum false_alarm_pixels / sum pixels    (DNA-Net eq. 13), a plain
      fraction; multiply by 1e6 to print the usual "x1e-6" figure
    * ``F-measure`` = dataset-level pixel F-measure at the operating threshold,
      :func:`f_measure` of the summed TP = intersection, FP = predicted - intersection,
      FN = union - predicted (EAAU-Net eq. 15, beta^2 = 0.3)
    * ``images`` = number of real images seen

    with ``eps = np.spacing(1)`` as in the reference code.  Ratios with a zero
    denominator (no images / no targets) are NaN.
    """

    _EPS = float(np.spacing(1))

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums = {k: 0.0 for k in STAT_KEYS}
        self._niou_sum = 0.0
        self._images = 0

    def update(self, stats: Mapping[str, jax.Array]) -> None:
        """Add a batch of per-image statistics.

        Raises:
          KeyError: if a statistic is missing.
          ValueError: if the arrays' shapes differ, or if any real image has more
            true components than ``max_targets`` (nothing is accumulated then).
        """
        arrs = {k: np.asarray(jax.device_get(stats[k]), dtype=np.float64) for k in STAT_KEYS}
        shapes = {a.shape for a in arrs.values()}
        if len(shapes) != 1:
            raise ValueError(f"statistics have different shapes: {shapes}")
        arrs = {k: a.reshape(-1) for k, a in arrs.items()}
        real = arrs["pixels"] > 0
        arrs = {k: a[real] for k, a in arrs.items()}
        if np.any(arrs["target_overflow"] > 0):
            worst = int(arrs["targets"][arrs["target_overflow"] > 0].max())
            raise ValueError(
                f"an image has {worst} true targets, more than max_targets of "
                "batch_statistics; raise max_targets (to at least that number) so "
                "Pd/Fa stay exact")
        for k in STAT_KEYS:
            self._sums[k] += float(arrs[k].sum())
        self._niou_sum += float(np.sum(arrs["intersection"] / (self._EPS + arrs["union"])))
        self._images += int(real.sum())

    def result(self) -> dict[str, float]:
        s = self._sums
        nan = float("nan")
        return {
            "IoU": s["intersection"] / (self._EPS + s["union"]) if self._images else nan,
            "nIoU": self._niou_sum / self._images if self._images else nan,
            "Pd": s["matched"] / s["targets"] if s["targets"] > 0 else nan,
            "Fa": s["false_alarm_pixels"] / s["pixels"] if s["pixels"] > 0 else nan,
            "F-measure": float(f_measure(s["intersection"], s["predicted"] - s["intersection"],
                                         s["union"] - s["predicted"])) if self._images else nan,
            "images": float(self._images),
        }
