"""Tests of irst_jax.evaluation.metrics (IoU, nIoU, Pd, Fa) and irst_jax.evaluation.components."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.measure import label as sk_label
from skimage.measure import regionprops

from irst_jax.evaluation.components import _connected_components_with_iterations, connected_components
from irst_jax.evaluation.metrics import (
    STAT_KEYS,
    MetricAccumulator,
    batch_statistics,
    operating_point_and_sweep_statistics,
    sweep_statistics,
)

EPS = np.spacing(1)
_cc = jax.jit(_connected_components_with_iterations)
# Hand-built cases run on the dense labelling path (one compilation each, cheaper); the
# compacted default path is compared with it and with the reference implementation below.
_stats = functools.partial(batch_statistics, max_pixels=None)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _to_logits(pred: np.ndarray) -> np.ndarray:
    return np.where(pred, 4.0, -4.0).astype(np.float32)


def _batch(preds, gts, valids=None):
    """Stack lists of [H, W] arrays into NHWC float32 batches."""
    p = np.stack([_to_logits(np.asarray(x, bool)) for x in preds])[..., None]
    g = np.stack([np.asarray(x, np.float32) for x in gts])[..., None]
    if valids is None:
        v = np.ones_like(g)
    else:
        v = np.stack([np.asarray(x, np.float32) for x in valids])[..., None]
    return jnp.asarray(p), jnp.asarray(g), jnp.asarray(v)


def _metrics(preds, gts, valids=None, **kw):
    stats = _stats(*_batch(preds, gts, valids), **kw)
    acc = MetricAccumulator()
    acc.update(stats)
    return acc.result(), {k: np.asarray(v) for k, v in stats.items()}


def _raster_relabel(lab: np.ndarray) -> np.ndarray:
    """Relabel 1..K in raster order of each component's first pixel."""
    flat = lab.reshape(-1)
    out = np.zeros_like(flat)
    seen: dict[int, int] = {}
    for i in np.flatnonzero(flat):
        out[i] = seen.setdefault(int(flat[i]), len(seen) + 1)
    return out.reshape(lab.shape)


def _expected_min_index_labels(mask: np.ndarray) -> np.ndarray:
    """skimage labels mapped to (minimum raster index of the component) + 1."""
    sk = sk_label(mask, connectivity=2)
    out = np.zeros(mask.shape, np.int64)
    for region in regionprops(sk):
        coords = region.coords
        first = int((coords[:, 0] * mask.shape[1] + coords[:, 1]).min())
        out[sk == region.label] = first + 1
    return out


def _reference_image(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Plain numpy + skimage version of the sequential reference evaluation."""
    pred = pred.astype(bool) & valid.astype(bool)
    gt = gt.astype(bool) & valid.astype(bool)
    true_regions = regionprops(sk_label(gt, connectivity=2))
    pred_regions = list(regionprops(sk_label(pred, connectivity=2)))
    matched = 0
    matched_pixels = 0
    for t in true_regions:  # label order
        for m, p in enumerate(pred_regions):  # label order, matched ones removed
            d = np.linalg.norm(np.array(p.centroid) - np.array(t.centroid))
            if d < 3:
                matched += 1
                matched_pixels += p.area
                del pred_regions[m]
                break
    return {
        "intersection": float((pred & gt).sum()),
        "union": float((pred | gt).sum()),
        "pixels": float(valid.astype(bool).sum()),
        "targets": float(len(true_regions)),
        "matched": float(matched),
        "false_alarm_pixels": float(pred.sum() - matched_pixels),
    }


def _reference_metrics(images) -> dict[str, float]:
    per = [_reference_image(*im) for im in images]
    s = {k: sum(p[k] for p in per) for k in per[0]}
    return {
        "IoU": s["intersection"] / (EPS + s["union"]),
        "nIoU": float(np.mean([p["intersection"] / (EPS + p["union"]) for p in per])),
        "Pd": s["matched"] / s["targets"],
        "Fa": s["false_alarm_pixels"] / s["pixels"],
    }


def _box(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def _pixels(shape, coords):
    m = np.zeros(shape, bool)
    for r, c in coords:
        m[r, c] = True
    return m


S = (10, 10)


# --------------------------------------------------------------------------- #
# hand-built cases
# --------------------------------------------------------------------------- #
def test_perfect_prediction():
    # One 3x3 target fully predicted: intersection = union = 9 -> IoU 1, nIoU 1;
    # same centroid -> matched, Pd 1; no other predicted pixel -> Fa 0.
    gt = _box(S, 3, 6, 3, 6)
    res, st = _metrics([gt], [gt])
    assert st["intersection"][0] == 9 and st["union"][0] == 9
    assert st["pixels"][0] == 100 and st["targets"][0] == 1 and st["matched"][0] == 1
    assert res["IoU"] == pytest.approx(1.0) and res["nIoU"] == pytest.approx(1.0)
    assert res["Pd"] == 1.0 and res["Fa"] == 0.0 and res["images"] == 1.0


def test_shifted_prediction():
    # Target rows 3-5, cols 3-5; prediction rows 3-5, cols 4-6.
    # Overlap cols 4-5 -> 3*2 = 6; union = 9 + 9 - 6 = 12 -> IoU = 0.5.
    # Centroids (4, 4) and (4, 5): distance 1 < 3 -> matched, Pd 1, Fa 0.
    gt = _box(S, 3, 6, 3, 6)
    pred = _box(S, 3, 6, 4, 7)
    res, st = _metrics([pred], [gt])
    assert (st["intersection"][0], st["union"][0]) == (6, 12)
    assert res["IoU"] == pytest.approx(0.5)
    assert res["Pd"] == 1.0 and res["Fa"] == 0.0


def test_far_false_alarm():
    # Target: one pixel at (1, 1); prediction: a 2x2 blob at rows 7-8, cols 7-8.
    # Centroid (7.5, 7.5) is ~9.2 px away -> not matched: Pd 0/1 = 0;
    # all 4 predicted pixels are false alarms: Fa = 4 / 100; IoU = 0 / 5 = 0.
    gt = _pixels(S, [(1, 1)])
    pred = _box(S, 7, 9, 7, 9)
    res, st = _metrics([pred], [gt])
    assert st["false_alarm_pixels"][0] == 4 and st["targets"][0] == 1 and st["matched"][0] == 0
    assert res["Pd"] == 0.0
    assert res["Fa"] == pytest.approx(4 / 100)
    assert res["IoU"] == pytest.approx(0.0)


def test_true_targets_processed_in_label_order():
    # True B = (2, 5) is first in raster order, true A = (4, 2) second.
    # Predicted P1 = {(3, 3), (3, 4)} centroid (3, 3.5): 1.80 px from both B and A.
    # Predicted P2 = {(6, 1)}: 2.24 px from A, ~5.7 px from B.
    # Label order B then A: B takes P1, A takes P2 -> Pd 2/2, Fa 0.
    # (The reverse order would give A->P1 and B unmatched, Pd 1/2, Fa 1/100.)
    gt = _pixels(S, [(2, 5), (4, 2)])
    pred = _pixels(S, [(3, 3), (3, 4), (6, 1)])
    res, st = _metrics([pred], [gt])
    assert st["targets"][0] == 2 and st["matched"][0] == 2
    assert res["Pd"] == 1.0 and res["Fa"] == 0.0


def test_one_prediction_near_two_targets_matches_only_first():
    # True (2, 2) and (2, 5) (not touching); one predicted component
    # {(2, 3), (2, 4)} centroid (2, 3.5) is 1.5 px from both. The first true
    # target takes it and removes it, the second finds nothing: Pd = 1/2, Fa 0.
    gt = _pixels(S, [(2, 2), (2, 5)])
    pred = _pixels(S, [(2, 3), (2, 4)])
    res, st = _metrics([pred], [gt])
    assert st["targets"][0] == 2 and st["matched"][0] == 1
    assert res["Pd"] == 0.5 and res["Fa"] == 0.0


def test_first_candidate_in_label_order_not_nearest():
    # True target (5, 5). Predicted P1 = (3, 5) at distance 2 (first in raster
    # order) and P2 = (6, 5) at distance 1 (closer). Label order picks P1, not the
    # nearest: 1 matched pixel, P2's 1 pixel is a false alarm -> Fa = 1/100.
    gt = _pixels(S, [(5, 5)])
    pred = _pixels(S, [(3, 5), (6, 5)])
    res, st = _metrics([pred], [gt])
    assert st["matched"][0] == 1 and st["false_alarm_pixels"][0] == 1
    assert res["Pd"] == 1.0 and res["Fa"] == pytest.approx(1 / 100)


def test_distance_threshold_is_strict():
    # Target (1, 1), prediction (1, 4): distance exactly 3 -> not matched (strict <).
    gt = _pixels(S, [(1, 1)])
    pred = _pixels(S, [(1, 4)])
    _, st = _metrics([pred], [gt])
    assert st["matched"][0] == 0 and st["false_alarm_pixels"][0] == 1
    # (1, 3): distance 2 -> matched.
    _, st = _metrics([_pixels(S, [(1, 3)])], [gt])
    assert st["matched"][0] == 1 and st["false_alarm_pixels"][0] == 0


def test_diagonal_pixels_form_one_component():
    # (2, 2), (3, 3), (4, 2) touch diagonally only -> one 8-connected component.
    m = _pixels(S, [(2, 2), (3, 3), (4, 2)])
    lab = np.asarray(connected_components(jnp.asarray(m)))
    assert set(np.unique(lab)) == {0, 2 * 10 + 2 + 1}
    _, st = _metrics([m], [m])
    assert st["targets"][0] == 1 and st["matched"][0] == 1


def test_padding_is_ignored():
    # Original image 8x8 in the top-left of a 10x10 padded array.
    # Target 2x2 at rows 2-3, cols 2-3, predicted exactly; extra predicted and
    # true pixels inside the padding (rows 8-9 / col 9) must not count:
    # pixels = 64, IoU 1, Pd 1/1, Fa 0.
    valid = _box(S, 0, 8, 0, 8)
    gt = _box(S, 2, 4, 2, 4) | _pixels(S, [(9, 9)])
    pred = _box(S, 2, 4, 2, 4) | _box(S, 8, 10, 0, 10) | _pixels(S, [(0, 9)])
    res, st = _metrics([pred], [gt], [valid])
    assert st["pixels"][0] == 64 and st["targets"][0] == 1
    assert (st["intersection"][0], st["union"][0]) == (4, 4)
    assert res["IoU"] == pytest.approx(1.0) and res["Pd"] == 1.0 and res["Fa"] == 0.0


def test_dummy_images_are_ignored():
    # Second image is a dummy (valid all zero): accumulator must skip it, also for nIoU.
    gt = _box(S, 3, 6, 3, 6)
    pred = _box(S, 3, 6, 4, 7)
    res, st = _metrics([pred, pred], [gt, gt], [np.ones(S), np.zeros(S)])
    assert st["pixels"][1] == 0
    assert res["images"] == 1.0
    assert res["IoU"] == pytest.approx(0.5) and res["nIoU"] == pytest.approx(0.5)
    assert res["Fa"] == 0.0 and res["Pd"] == 1.0


def test_niou_by_hand():
    # Image 1: shifted 3x3 prediction, 6/12 = 0.5.
    # Image 2: 1-pixel target, no prediction: 0/1 = 0.
    # Image 3: no target, no prediction: 0/(eps + 0) = 0 (counts in the mean).
    # nIoU = (0.5 + 0 + 0) / 3 = 1/6; IoU = (6 + 0 + 0) / (12 + 1 + 0) = 6/13.
    # Pd = 1 matched / 2 targets; Fa = 0 / 300.
    empty = np.zeros(S, bool)
    preds = [_box(S, 3, 6, 4, 7), empty, empty]
    gts = [_box(S, 3, 6, 3, 6), _pixels(S, [(1, 1)]), empty]
    res, _ = _metrics(preds, gts)
    assert res["nIoU"] == pytest.approx(1 / 6, rel=1e-12)
    assert res["IoU"] == pytest.approx(6 / 13, rel=1e-12)
    assert res["Pd"] == 0.5 and res["Fa"] == 0.0 and res["images"] == 3.0


def test_target_overflow_raises():
    # Three single-pixel targets with max_targets=2 -> overflow flagged, update raises.
    gt = _pixels(S, [(1, 1), (1, 5), (5, 5)])
    stats = _stats(*_batch([gt], [gt]), max_targets=2)
    assert np.asarray(stats["target_overflow"]).tolist() == [1.0]
    acc = MetricAccumulator()
    with pytest.raises(ValueError, match="max_targets"):
        acc.update(stats)
    assert acc.result()["images"] == 0.0
    # With enough room, all three are matched.
    res, st = _metrics([gt], [gt], max_targets=3)
    assert st["target_overflow"][0] == 0 and res["Pd"] == 1.0


# --------------------------------------------------------------------------- #
# connected components vs skimage
# --------------------------------------------------------------------------- #
def _check_cc(mask: np.ndarray) -> int:
    lab, iters = _cc(jnp.asarray(mask))
    lab = np.asarray(lab)
    assert lab.dtype == np.int32
    sk = sk_label(mask, connectivity=2)
    np.testing.assert_array_equal(_raster_relabel(lab), sk)
    np.testing.assert_array_equal(lab, _expected_min_index_labels(mask))
    return int(iters)


@pytest.mark.parametrize("shape", [(16, 16), (23, 37), (64, 64)])
def test_connected_components_random(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.05, 0.2, 0.4, 0.55, 0.7, 0.9):
        _check_cc(rng.random(shape) < density)


def test_connected_components_special_masks():
    shape = (20, 24)
    assert _check_cc(np.zeros(shape, bool)) == 1
    _check_cc(np.ones(shape, bool))
    # Checkerboard: all foreground squares touch diagonally -> one component.
    cb = (np.add.outer(np.arange(20), np.arange(24)) % 2) == 0
    _check_cc(cb)
    assert len(np.unique(np.asarray(connected_components(jnp.asarray(cb))))) == 2
    # Many isolated single pixels (every third row / column).
    grid = np.zeros(shape, bool)
    grid[::3, ::3] = True
    _check_cc(grid)
    # Border targets on every edge and corner.
    border = np.zeros(shape, bool)
    border[0, 0] = border[0, -1] = border[-1, 0] = border[-1, -1] = True
    border[0, 5:8] = True
    border[-1, 10] = True
    border[8:11, 0] = True
    border[12, -1] = True
    _check_cc(border)
    # Anti-diagonal line (diagonal touches only).
    _check_cc(np.fliplr(np.eye(20, 24, dtype=bool)))


def test_connected_components_snake_converges():
    # Boustrophedon snake: one component of ~2100 pixels whose path runs through the
    # whole 64x64 image; plain min propagation would need ~2000 iterations.
    h = w = 64
    for flip in (False, True):
        m = np.zeros((h, w), bool)
        m[::2, :] = True
        for r in range(1, h, 2):
            m[r, -1 if (r // 2) % 2 == 0 else 0] = True
        if flip:
            m = m[::-1, ::-1].copy()
        iters = _check_cc(m)
        assert len(np.unique(sk_label(m, connectivity=2))) == 2
        assert iters <= 20, iters
    # A square spiral walking inwards (turn right at walls / visited cells).
    n = 31
    s = np.zeros((n, n), bool)
    r, c, dr, dc = 0, 0, 0, 1
    s[r, c] = True
    for _ in range(n * n):
        moved = False
        for _turn in range(2):
            nr, nc = r + 2 * dr, c + 2 * dc
            if 0 <= nr < n and 0 <= nc < n and not s[nr, nc]:
                s[r + dr, c + dc] = s[nr, nc] = True
                r, c, moved = nr, nc, True
                break
            dr, dc = dc, -dr
        if not moved:
            break
    assert len(np.unique(sk_label(s, connectivity=2))) == 2 and s.sum() > 400
    assert _check_cc(s) <= 20


# --------------------------------------------------------------------------- #
# against an independent reference implementation
# --------------------------------------------------------------------------- #
def _random_images(n: int, shape, seed: int):
    rng = np.random.default_rng(seed)
    h, w = shape
    out = []
    for i in range(n):
        gt = np.zeros(shape, bool)
        pred = np.zeros(shape, bool)
        n_targets = 0 if i % 5 == 0 else int(rng.integers(1, 6))
        for _ in range(n_targets):
            th, tw = rng.integers(1, 7, size=2)
            r, c = rng.integers(0, h - th + 1), rng.integers(0, w - tw + 1)
            gt[r:r + th, c:c + tw] = True
            mode = rng.integers(0, 4)
            if mode == 0:  # exact
                pred[r:r + th, c:c + tw] = True
            elif mode == 1:  # shifted by up to 3 px
                dr, dc = rng.integers(-3, 4, size=2)
                pred[max(r + dr, 0):max(r + dr + th, 0), max(c + dc, 0):max(c + dc + tw, 0)] = True
            elif mode == 2:  # partial, random pixels of the box
                pred[r:r + th, c:c + tw] |= rng.random((th, tw)) < 0.6
            # mode 3: missed
        for _ in range(int(rng.integers(0, 4))):  # false alarms, some near targets
            fh, fw = rng.integers(1, 4, size=2)
            r, c = rng.integers(0, h - fh + 1), rng.integers(0, w - fw + 1)
            pred[r:r + fh, c:c + fw] = True
        pred |= rng.random(shape) < 0.01  # speckle
        valid = np.zeros(shape, bool)
        valid[: int(rng.integers(h // 2, h + 1)), : int(rng.integers(w // 2, w + 1))] = True
        out.append((pred, gt, valid))
    return out


def test_matches_reference_implementation():
    images = _random_images(20, (32, 48), seed=0)
    # Also a crowded image: many small targets close together, so the greedy
    # order matters.
    rng = np.random.default_rng(1)
    crowded_gt = np.zeros((32, 48), bool)
    crowded_gt[1::3, 1::3] = True
    crowded_pred = np.zeros((32, 48), bool)
    crowded_pred[2::4, ::3] = True
    crowded_pred |= rng.random((32, 48)) < 0.05
    images.append((crowded_pred, crowded_gt, np.ones((32, 48), bool)))

    preds, gts, valids = zip(*images)
    stats = batch_statistics(*_batch(preds, gts, valids), max_targets=256)  # compacted path
    stats = {k: np.asarray(v) for k, v in stats.items()}
    for i, im in enumerate(images):
        ref = _reference_image(*im)
        got = {k: float(stats[k][i]) for k in ref}
        assert got == ref, (i, got, ref)
    assert stats["target_overflow"].sum() == 0

    acc = MetricAccumulator()
    acc.update(stats)
    res = acc.result()
    ref = _reference_metrics(images)
    for k in ("IoU", "nIoU", "Pd", "Fa"):
        assert res[k] == pytest.approx(ref[k], rel=1e-12, abs=0), k
    assert res["images"] == len(images)
    assert 0.0 < res["Pd"] < 1.0 and res["Fa"] > 0.0  # non-trivial data


# --------------------------------------------------------------------------- #
# streaming, leading shapes, jit
# --------------------------------------------------------------------------- #
def test_accumulation_and_leading_shapes():
    images = _random_images(8, (16, 16), seed=3)
    preds, gts, valids = zip(*images)
    p, g, v = _batch(preds, gts, valids)

    whole = MetricAccumulator()
    whole.update(_stats(p, g, v))

    split = MetricAccumulator()
    split.update(_stats(p[:4], g[:4], v[:4]))
    split.update(_stats(p[4:], g[4:], v[4:]))
    assert split.result() == whole.result()

    # [devices, B] leading shape, as produced by pmap / vmap over a device axis.
    fn = jax.jit(jax.vmap(functools.partial(batch_statistics, max_targets=32, max_pixels=None)))
    dev_stats = fn(p.reshape(2, 4, 16, 16, 1), g.reshape(2, 4, 16, 16, 1), v.reshape(2, 4, 16, 16, 1))
    assert all(dev_stats[k].shape == (2, 4) for k in STAT_KEYS)
    dev = MetricAccumulator()
    dev.update(dev_stats)
    assert dev.result() == whole.result()

    whole.reset()
    assert whole.result()["images"] == 0.0


def test_compacted_path_equals_dense_path():
    images = _random_images(3, (16, 16), seed=4)
    preds, gts, valids = zip(*images)
    args = _batch(preds, gts, valids)
    eager = batch_statistics(*args)
    jitted = _stats(*args)
    for k in STAT_KEYS:
        assert eager[k].dtype == jnp.float32 and eager[k].shape == (3,)
        np.testing.assert_array_equal(np.asarray(eager[k]), np.asarray(jitted[k]))


def test_bad_shapes_raise():
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError):
        batch_statistics(x, x, jnp.zeros((2, 8, 8, 2)))
    with pytest.raises(ValueError):
        batch_statistics(x[..., 0], x[..., 0], x[..., 0])


# --------------------------------------------------------------------------- #
# compacted (fast) labelling path
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", [(16, 64), (21, 35)])  # whole row segments, partial ones
def test_compact_components_batched_match_skimage(shape):
  from irst_jax.evaluation.components import compact_components

  rng = np.random.default_rng(11)
  masks = [rng.random(shape) < d for d in (0.02, 0.1, 0.3, 0.5, 0.7)]
  masks.append(np.zeros(shape, bool))
  masks.append(np.ones(shape, bool))  # at most 1024 pixels, within the capacity
  masks.append((np.add.outer(np.arange(shape[0]), np.arange(shape[1])) % 2) == 0)  # diagonals
  grid = np.zeros(shape, bool)
  grid[::2, ::3] = True  # many single-pixel components
  grid[0, :] = grid[:, -1] = True  # border targets
  masks.append(grid)
  fn = jax.jit(jax.vmap(lambda m: compact_components(m, 1024)))
  labels, rows, cols, present, count = (np.asarray(x) for x in fn(jnp.asarray(np.stack(masks))))
  for i, m in enumerate(masks):
    assert count[i] == m.sum()
    img = np.zeros(shape, np.int64)
    p = present[i]
    img[rows[i][p], cols[i][p]] = labels[i][p] + 1
    np.testing.assert_array_equal(_raster_relabel(img), sk_label(m, connectivity=2))


def test_scattered_pixels_overflow_the_segments_not_the_pixels():
  # 12 isolated pixels in 12 different 32-pixel row segments: within a capacity of 16
  # pixels, but over its 16 // 4 = 4 segments, so the count must signal an overflow (and
  # the statistics fall back to an exact path).
  from irst_jax.evaluation.components import compact_components

  mask = np.zeros((32, 48), bool)
  mask[0:24:2, 3] = True  # rows 0, 2, ..., 22: one pixel a segment, none touching
  mask[4, 3], mask[4, 40] = False, True  # row 4: in the second segment of its row
  assert mask.sum() == 12
  count = int(compact_components(jnp.asarray(mask), 16)[-1])
  assert count > 16
  assert int(compact_components(jnp.asarray(mask), 64)[-1]) == 12
  gt = np.zeros_like(mask)
  gt[4, 40] = True
  args = _batch([mask], [gt])
  small = batch_statistics(*args, max_pixels=16)
  assert float(small["matched"][0]) == 1.0 and float(small["predicted"][0]) == 12.0
  assert float(small["false_alarm_pixels"][0]) == 11.0


def test_overflow_falls_back_to_dense_path():
  # Capacity 16 pixels (4 row segments): most images overflow; results must equal the dense path
  # and the skimage reference exactly.
  images = _random_images(6, (32, 32), seed=12)
  preds, gts, valids = zip(*images)
  args = _batch(preds, gts, valids)
  small = {k: np.asarray(v) for k, v in batch_statistics(*args, max_pixels=16).items()}
  dense = {k: np.asarray(v) for k, v in batch_statistics(*args, max_pixels=None).items()}
  for k in STAT_KEYS:
    np.testing.assert_array_equal(small[k], dense[k])
  for i, im in enumerate(images):
    ref = _reference_image(*im)
    assert {k: float(small[k][i]) for k in ref} == ref


@pytest.mark.parametrize("pred_pixels", [10, 40, 200])
def test_capacity_tiers_equal_dense_path(pred_pixels):
  # max_pixels=64: the compacted path tries 16 pixels, then 64, then the dense path. 10
  # foreground pixels stay in the first tier, 40 need the second, 200 the dense one; every
  # tier must give the dense path's numbers exactly, at one threshold and in a sweep. (Four
  # images and the thresholds of the test below: the two share their compiled programs.)
  rng = np.random.default_rng(pred_pixels)
  preds, gts = [], []
  for _ in range(4):
    pred = np.zeros(32 * 32, bool)
    pred[rng.choice(32 * 32, pred_pixels, replace=False)] = True
    gt = np.zeros((32, 32), bool)
    r, c = rng.integers(2, 28, 2)
    gt[r:r + 2, c:c + 2] = True
    preds.append(pred.reshape(32, 32) | gt)
    gts.append(gt)
  args = _batch(preds, gts)
  tiered = {k: np.asarray(v) for k, v in batch_statistics(*args, max_pixels=64).items()}
  dense = {k: np.asarray(v) for k, v in batch_statistics(*args, max_pixels=None).items()}
  for k in STAT_KEYS:
    np.testing.assert_array_equal(tiered[k], dense[k])
  scores = jax.nn.sigmoid(args[0])
  thresholds = jnp.array([0.2, 0.5, 0.8])
  swept = sweep_statistics(scores, *args[1:], thresholds, max_pixels=64)
  swept_dense = sweep_statistics(scores, *args[1:], thresholds, max_pixels=None)
  for k in STAT_KEYS:
    np.testing.assert_array_equal(np.asarray(swept[k]), np.asarray(swept_dense[k]))
  np.testing.assert_array_equal(tiered["predicted"], [p.sum() for p in preds])


@pytest.mark.parametrize("max_pixels", [1024, 64, None])
def test_operating_point_and_sweep_in_one_pass_equal_separate_calls(max_pixels):
  # Values and scores are different maps (as for a baseline: G - T and G / max G), so the
  # operating prediction is not one of the sweep's; capacity 64 overflows into the dense path.
  rng = np.random.default_rng(5)
  images = _random_images(4, (32, 32), seed=21)
  preds, gts, valids = zip(*images)
  values, mask, valid = _batch(preds, gts, valids)
  scores = jnp.asarray(rng.random(values.shape).astype(np.float32) ** 6)
  thresholds = jnp.array([0.2, 0.5, 0.8])
  stats, swept = operating_point_and_sweep_statistics(values, 0.0, scores, mask, valid,
                                                      thresholds, max_pixels=max_pixels)
  alone = batch_statistics(values, mask, valid, max_pixels=max_pixels)
  swept_alone = sweep_statistics(scores, mask, valid, thresholds, max_pixels=max_pixels)
  for k in STAT_KEYS:
    np.testing.assert_array_equal(np.asarray(stats[k]), np.asarray(alone[k]))
    np.testing.assert_array_equal(np.asarray(swept[k]), np.asarray(swept_alone[k]))
  assert np.asarray(swept["predicted"]).shape == (3, 4)
  for i, im in enumerate(images):
    assert {k: float(stats[k][i]) for k in _reference_image(*im)} == _reference_image(*im)
