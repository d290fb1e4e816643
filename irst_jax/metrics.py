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
  (``skimage.measure.label(connectivity=2)``); centroids are the mean (row, col) of
  each component (``regionprops``).  For each true component, in label order, the
  first not-yet-matched predicted component (in label order) whose centroid lies at
  Euclidean distance ``< 3`` pixels is matched and removed.
  ``Pd = matched true targets / true targets``;
  ``Fa = predicted pixels outside matched predicted components / all pixels``
  (pixels of all test images at original size).  Fa is returned as a plain
  fraction; the field prints it multiplied by 1e6 ("x1e-6").

  Known quirk not reproduced: the official DNA-Net metric code drops from the false
  alarm count every unmatched predicted component whose *area* equals that of some
  matched component (it removes components by area).  We follow BasicIRSTD, which
  counts every pixel of every unmatched predicted component.

Everything is evaluated at the original image size: images are zero padded to a
multiple of 32 for the network and a ``valid`` mask (1 on original pixels, 0 on
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

__all__ = [
    "connected_components",
    "batch_statistics",
    "MetricAccumulator",
    "STAT_KEYS",
]

STAT_KEYS = (
    "intersection",
    "union",
    "pixels",
    "targets",
    "matched",
    "false_alarm_pixels",
    "target_overflow",
)

_BIG = np.iinfo(np.int32).max


# --------------------------------------------------------------------------- #
# Connected components
# --------------------------------------------------------------------------- #
def _neighbourhood_min(labels: jax.Array, fg: jax.Array) -> jax.Array:
    """Min of the labels over the 3x3 neighbourhood, restricted to foreground.

    Returns 0 on background pixels.
    """
    h, w = labels.shape
    big = jnp.where(fg, labels, _BIG)
    padded = jnp.pad(big, 1, constant_values=_BIG)
    out = big
    for dy in range(3):
        for dx in range(3):
            if dy == 1 and dx == 1:
                continue
            out = jnp.minimum(out, padded[dy:dy + h, dx:dx + w])
    return jnp.where(fg, out, 0)


def _pointer_jump(flat: jax.Array, fg: jax.Array) -> jax.Array:
    """label <- label[label - 1] on foreground pixels (labels are 1-based indices)."""
    return jnp.where(fg, flat[jnp.maximum(flat - 1, 0)], 0)


def _connected_components_with_iterations(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:func:`connected_components` plus the number of while-loop iterations."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    h, w = mask.shape
    if h * w + 1 > _BIG:
        raise ValueError(f"image of {h}x{w} pixels is too large for int32 labels")
    fg = mask.astype(bool)
    fg_flat = fg.reshape(-1)
    n = h * w
    init = jnp.where(fg_flat, jnp.arange(1, n + 1, dtype=jnp.int32), 0)

    # Invariant: every foreground label is (raster index + 1) of a pixel of the same
    # component and never exceeds the pixel's own index + 1; labels only decrease.
    # At a fixed point the neighbourhood min equals every pixel's own label, so a
    # component carries one label, and by the invariant it is that of its first
    # (minimum raster index) pixel.
    def body(state):
        flat, _, it = state
        m = _neighbourhood_min(flat.reshape(h, w), fg).reshape(-1)
        # Hooking: also lower the label *of the pixel a label points to*
        # (scatter-min), which moves whole trees at once (Shiloach-Vishkin style).
        target = jnp.where(fg_flat, flat - 1, n)  # background -> out of range, dropped
        new = flat.at[target].min(m, mode="drop")
        new = jnp.minimum(new, m)
        new = jnp.where(fg_flat, new, 0)
        # Pointer jumping (path halving twice).
        new = _pointer_jump(new, fg_flat)
        new = _pointer_jump(new, fg_flat)
        changed = jnp.any(new != flat)
        return new, changed, it + 1

    def cond(state):
        return state[1]

    flat, _, iters = jax.lax.while_loop(cond, body, (init, jnp.array(True), jnp.array(0, jnp.int32)))
    return flat.reshape(h, w), iters


def connected_components(mask: jax.Array) -> jax.Array:
    """Label 8-connected components of a 2-D boolean mask (jit-compatible).

    Equivalent to ``skimage.measure.label(mask, connectivity=2)`` up to the label
    values: each component is labelled by ``(raster index of its first pixel) + 1``
    (index ``row * W + col``), so sorting the labels gives skimage's raster order.

    Algorithm: minimum-label propagation over the 3x3 neighbourhood (restricted to
    foreground), with hooking (scatter-min into the pixel a label points to) and
    pointer jumping (``label = label[label - 1]``), iterated in a
    ``lax.while_loop`` until nothing changes.  Long snakes converge in a number of
    iterations roughly logarithmic in their length rather than linear.

    Args:
      mask: ``[H, W]`` bool (or anything whose nonzero entries are foreground).

    Returns:
      ``[H, W]`` int32 labels, 0 on background.

    Raises:
      ValueError: if ``mask`` is not 2-D or has more than 2**31 - 2 pixels.
    """
    return _connected_components_with_iterations(mask)[0]


# --------------------------------------------------------------------------- #
# Per-image statistics
# --------------------------------------------------------------------------- #
def _component_stats(labels: jax.Array, num_segments: int):
    """Area, row sum and column sum per label (segment 0 = background)."""
    h, w = labels.shape
    seg = labels.reshape(-1)
    rows = jnp.broadcast_to(jnp.arange(h, dtype=jnp.int32)[:, None], (h, w)).reshape(-1)
    cols = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32)[None, :], (h, w)).reshape(-1)
    ones = jnp.ones_like(seg)
    area = jax.ops.segment_sum(ones, seg, num_segments=num_segments)
    # Integer sums are exact while H*W*max(H, W) < 2**31 (images up to ~1290^2).
    rsum = jax.ops.segment_sum(rows, seg, num_segments=num_segments)
    csum = jax.ops.segment_sum(cols, seg, num_segments=num_segments)
    safe = jnp.maximum(area, 1)
    fsafe = safe.astype(jnp.float32)

    def mean(total):  # integer part exact, only the fraction is rounded
        return (total // safe).astype(jnp.float32) + (total % safe).astype(jnp.float32) / fsafe

    return area, mean(rsum), mean(csum)


def _image_statistics(pred: jax.Array, gt: jax.Array, valid: jax.Array, *,
                      distance_threshold: float, max_targets: int) -> dict[str, jax.Array]:
    h, w = pred.shape
    n = h * w
    num_segments = n + 1

    inter = jnp.sum(pred & gt, dtype=jnp.int32)
    union = jnp.sum(pred | gt, dtype=jnp.int32)
    pixels = jnp.sum(valid, dtype=jnp.int32)

    lab_t = connected_components(gt)
    lab_p = connected_components(pred)
    _, r_t, c_t = _component_stats(lab_t, num_segments)
    area_p, r_p, c_p = _component_stats(lab_p, num_segments)

    # True components in label order: a pixel is a component's root iff its label
    # is its own index + 1; roots in raster order == labels in increasing order.
    idx1 = jnp.arange(1, n + 1, dtype=jnp.int32)
    is_root_t = lab_t.reshape(-1) == idx1
    targets = jnp.sum(is_root_t, dtype=jnp.int32)

    # Predicted components over the full label space (label l <-> segment l).
    is_comp_p = area_p > 0
    is_comp_p = is_comp_p.at[0].set(False)
    thr2 = jnp.float32(distance_threshold) ** 2
    seg_ids = jnp.arange(num_segments, dtype=jnp.int32)

    # Greedy matching, sequential over the true targets exactly like the
    # reference loops.  The loop stops after the image's last true target (under
    # vmap: after the batch's largest target count), not after max_targets.
    # The k-th true target is the next root after the previous one (raster order).
    def match_one(carry):
        k, prev, taken, matched = carry
        lt = jnp.argmax(is_root_t & (idx1 > prev)).astype(jnp.int32) + 1  # label
        dr = r_p - r_t[lt]
        dc = c_p - c_t[lt]
        ok = is_comp_p & ~taken & (dr * dr + dc * dc < thr2)
        hit = jnp.any(ok)
        first = jnp.argmax(ok)  # smallest label satisfying the condition
        taken = taken | ((seg_ids == first) & hit)
        return k + 1, lt, taken, matched + hit.astype(jnp.int32)

    n_loop = jnp.minimum(targets, max_targets)
    taken0 = jnp.zeros((num_segments,), bool)
    zero = jnp.array(0, jnp.int32)
    _, _, taken, matched = jax.lax.while_loop(
        lambda c: c[0] < n_loop, match_one, (zero, zero, taken0, zero))

    pred_pixels = jnp.sum(pred, dtype=jnp.int32)
    matched_pixels = jnp.sum(jnp.where(taken, area_p, 0), dtype=jnp.int32)
    false_alarm = pred_pixels - matched_pixels

    out = {
        "intersection": inter,
        "union": union,
        "pixels": pixels,
        "targets": targets,
        "matched": matched,
        "false_alarm_pixels": false_alarm,
        "target_overflow": targets > max_targets,
    }
    return {k: v.astype(jnp.float32) for k, v in out.items()}


def batch_statistics(logits: jax.Array, mask: jax.Array, valid: jax.Array, *,
                     threshold: float = 0.0, distance_threshold: float = 3.0,
                     max_targets: int = 32) -> dict[str, jax.Array]:
    """Per-image sufficient statistics for IoU, nIoU, Pd and Fa (jit-compatible).

    Layout NHWC.  Prediction is ``logits > threshold`` (``threshold = 0`` is
    sigmoid 0.5), ground truth is ``mask > 0``; both are multiplied by ``valid``
    first, so zero padding never counts.  Components use 8-connectivity; a true
    target is matched to the first not-yet-matched predicted component (label
    order) whose centroid is closer than ``distance_threshold`` pixels (strict
    ``<``), true targets processed in label order (DNA-Net eqs. 12-13, BasicIRSTD
    ``PD_FA``).  Only the first ``max_targets`` true components of an image are
    matched; ``target_overflow`` flags images with more (the accumulator then
    raises).  Predicted components are not capped.

    Centroid distances are computed in float32 from exact int32 coordinate sums
    (valid while ``H * W * max(H, W) < 2**31``, i.e. images up to ~1290x1290);
    they can only disagree with the float64 reference for distances within
    ~1e-5 px of the threshold, where the reference's own rounding decides.

    Args:
      logits: ``[B, H, W, 1]`` raw network outputs (pre-sigmoid).
      mask: ``[B, H, W, 1]`` ground truth, values in {0, 1}.
      valid: ``[B, H, W, 1]`` 1 on original image pixels, 0 on padding.
      threshold: logit threshold.
      distance_threshold: centroid distance in pixels.
      max_targets: static cap on true components matched per image.

    Returns:
      dict of float32 arrays of shape ``[B]`` (all counts in pixels or
      components): ``intersection``, ``union``, ``pixels`` (valid pixels),
      ``targets`` (true components), ``matched`` (matched true components),
      ``false_alarm_pixels`` (predicted pixels outside matched predicted
      components), ``target_overflow`` (1.0 if ``targets > max_targets``).

    Raises:
      ValueError: if the inputs are not ``[B, H, W, 1]`` of the same shape.
    """
    shapes = {jnp.shape(logits), jnp.shape(mask), jnp.shape(valid)}
    if len(shapes) != 1:
        raise ValueError(f"logits, mask, valid must have the same shape, got {shapes}")
    shape = jnp.shape(logits)
    if len(shape) != 4 or shape[-1] != 1:
        raise ValueError(f"expected [B, H, W, 1] (NHWC, one channel), got {shape}")
    return _batch_statistics(logits, mask, valid, threshold=float(threshold),
                             distance_threshold=float(distance_threshold),
                             max_targets=int(max_targets))


@functools.partial(jax.jit, static_argnames=("threshold", "distance_threshold", "max_targets"))
def _batch_statistics(logits, mask, valid, *, threshold, distance_threshold, max_targets):
    v = valid[..., 0] > 0
    pred = (logits[..., 0] > threshold) & v
    gt = (mask[..., 0] > 0) & v
    fn = lambda p, g, vv: _image_statistics(
        p, g, vv, distance_threshold=distance_threshold, max_targets=max_targets)
    return jax.vmap(fn)(pred, gt, v)


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
            "images": float(self._images),
        }
