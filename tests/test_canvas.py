"""Tests of irst_jax/data/canvas.py: the few padded shapes of whole-image evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from irst_jax.data import canvas


def test_padded_size():
  assert canvas.padded_size((1, 1), 32) == (32, 32)
  assert canvas.padded_size((32, 33), 32) == (32, 64)
  assert canvas.padded_size((250, 250), 32) == (256, 256)
  assert canvas.padded_size((21, 9), 10) == (30, 10)


def test_assign_smallest_area_then_smaller_height():
  canvases = [(32, 64), (64, 32), (96, 96)]
  # Both 32x64 and 64x32 hold a 10x10 image with area 2048: the smaller height wins.
  assert canvas.assign((10, 10), canvases) == (32, 64)
  assert canvas.assign((40, 10), canvases) == (64, 32)     # too tall for 32x64
  assert canvas.assign((32, 64), canvases) == (32, 64)     # exactly fills it
  assert canvas.assign((33, 33), canvases) == (96, 96)
  with pytest.raises(ValueError, match=r"no canvas of \[\(32, 64\), \(64, 32\), \(96, 96\)\] "
                     r"holds an image of 97x5 pixels"):
    canvas.assign((97, 5), canvases)


def test_plan_single_canvas_is_the_largest_height_by_largest_width():
  # One canvas: the largest padded height by the largest padded width, even though no image
  # has both (20x70 -> 32x96, 70x20 -> 96x32).
  assert canvas.plan_canvases([(20, 70), (70, 20)], 32, 1) == [(96, 96)]


def test_plan_hand_computed_greedy():
  # Padded sizes: 5 x (32, 96), 5 x (96, 32), 1 x (96, 96); areas 3072, 3072, 9216.
  sizes = [(30, 90)] * 5 + [(90, 30)] * 5 + [(96, 96)]
  # Start (96, 96): cost 11 * 9216 = 101,376. Adding (32, 96) or (96, 32) gives
  # 5 * 3072 + 6 * 9216 = 70,656 (tie: the first candidate in (H, W) order, (32, 96));
  # adding (32, 32) holds nothing. Then (96, 32): 10 * 3072 + 9216 = 39,936.
  assert canvas.plan_canvases(sizes, 32, 2) == [(32, 96), (96, 96)]
  assert canvas.plan_canvases(sizes, 32, 3) == [(32, 96), (96, 32), (96, 96)]
  # No further candidate lowers the area: a larger budget gives the same plan.
  assert canvas.plan_canvases(sizes, 32, 10) == [(32, 96), (96, 32), (96, 96)]


def test_plan_drops_a_canvas_that_later_picks_empty():
  # Without the 96x96 image, (96, 96) (the first pick) holds nothing once (32, 96) and
  # (96, 32) are chosen: 10 * 9216 -> 5 * 3072 + 5 * 9216 -> 10 * 3072, and it is dropped.
  sizes = [(30, 90)] * 5 + [(90, 30)] * 5
  assert canvas.plan_canvases(sizes, 32, 3) == [(32, 96), (96, 32)]
  assert canvas.plan_canvases(sizes, 32, 2) == [(32, 96), (96, 96)]


def test_plan_one_size_and_multiple():
  assert canvas.plan_canvases([(5, 7)] * 3, 32, 4) == [(32, 32)]
  assert canvas.plan_canvases([(5, 7), (11, 3)], 10, 4) == [(10, 10), (20, 10)]
  assert canvas.plan_canvases([(5, 7), (11, 3)], 10, 1) == [(20, 10)]


def _total_area(sizes, canvases):
  return sum(np.prod(canvas.assign(s, canvases)) for s in sizes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_properties_and_order_independence(seed):
  rng = np.random.default_rng(seed)
  sizes = [tuple(int(v) for v in rng.integers(100, 520, size=2)) for _ in range(120)]
  own = {canvas.padded_size(s, 32) for s in sizes}
  previous = None
  for n in (1, 2, 3, 4, 6):
    plan = canvas.plan_canvases(sizes, 32, n)
    assert 1 <= len(plan) <= n and plan == sorted(plan)
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in plan)
    used = {canvas.assign(s, plan) for s in sizes}        # holds every image, none unused
    assert used == set(plan)
    area = _total_area(sizes, plan)
    assert area >= sum(h * w for h, w in (canvas.padded_size(s, 32) for s in sizes))
    if previous is not None:                              # more canvases never cost more
      assert area <= previous
    previous = area
    for perm_seed in range(3):
      order = np.random.default_rng(perm_seed).permutation(len(sizes))
      assert canvas.plan_canvases([sizes[i] for i in order], 32, n) == plan
  # An unbounded budget gives every image its own padded size (per-size padding).
  plan = canvas.plan_canvases(sizes, 32, 10_000)
  assert set(plan) == own
  assert all(canvas.assign(s, plan) == canvas.padded_size(s, 32) for s in sizes)


def test_plan_errors():
  with pytest.raises(ValueError, match="max_canvases and multiple must be >= 1, got 0, 32"):
    canvas.plan_canvases([(10, 10)], 32, 0)
  with pytest.raises(ValueError, match="max_canvases and multiple must be >= 1, got 4, 0"):
    canvas.plan_canvases([(10, 10)], 0, 4)
  with pytest.raises(ValueError, match="at least one image size"):
    canvas.plan_canvases([], 32, 4)
  with pytest.raises(ValueError, match="image size must be positive, got 0x10"):
    canvas.plan_canvases([(10, 10), (0, 10)], 32, 4)


def test_metrics_ignore_canvas_padding():
  """An image's statistics are the same on its own padded shape and on a larger canvas whose
  padding holds confident false detections (the valid mask keeps them out)."""
  from configs import default
  from irst_jax.evaluation import curves

  rng = np.random.default_rng(0)
  h, w = 27, 45
  logits = rng.normal(-4.0, 1.5, (h, w)).astype(np.float32)   # a few false pixels
  mask = np.zeros((h, w), np.float32)
  mask[3:5, 4:6] = mask[20:22, 40:43] = 1.0
  logits[3:5, 4:6] = 5.0                  # the first target found, the second missed:
  logits[16:27, 36:45] = -8.0             # no false detection near it
  false_pixels = int(np.sum(logits > 0)) - 4
  assert false_pixels > 0
  cfg = default.get_base_config().eval
  cfg.roc_thresholds = (0.3, 0.7)
  results = []
  for hc, wc in ((32, 64), (64, 96)):
    batch = [np.zeros((1, hc, wc, 1), np.float32) for _ in range(3)]
    batch[0][:] = 9.0                                      # padding: confident detections
    batch[0][0, :h, :w, 0], batch[1][0, :h, :w, 0], batch[2][0, :h, :w, 0] = logits, mask, 1.0
    scores = 1.0 / (1.0 + np.exp(-batch[0]))
    evaluation = curves.Evaluation(cfg)
    evaluation.update(curves.evaluation_outputs(batch[0], 0.0, scores, batch[1], batch[2], cfg))
    results.append(evaluation.result())
  (a, curve_a), (b, curve_b) = results
  assert a == b
  assert a["images"] == 1 and a["Pd"] == 0.5
  assert a["IoU"] == pytest.approx(4 / (4 + 6 + false_pixels))   # intersection / union
  assert a["Fa"] == pytest.approx(false_pixels / (h * w))
  np.testing.assert_equal(curve_a, curve_b)
