"""Model-driven baselines (Top-Hat, Max-Median, MPCM) and the adaptive threshold, by hand."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from skimage.morphology import footprint_rectangle, white_tophat

from configs import default
from irst_jax.evaluation import baselines, curves


def _spike(shape=(15, 15), at=(7, 7), value=9.0):
  x = np.zeros(shape, np.float32)
  x[at] = value
  return x


def test_top_hat():
  # A single bright pixel is removed by the 3x3 opening: top-hat = the pixel itself.
  out = np.asarray(baselines.top_hat(jnp.asarray(_spike())))
  np.testing.assert_allclose(out, _spike())
  # A 4x4 plateau survives the 3x3 opening: top-hat 0.
  plateau = np.zeros((12, 12), np.float32)
  plateau[4:8, 4:8] = 5.0
  np.testing.assert_allclose(np.asarray(baselines.top_hat(jnp.asarray(plateau))), 0.0)
  # Against scikit-image on a random image, away from the border (border rules differ).
  img = np.random.default_rng(0).random((20, 24)).astype(np.float32)
  ref = white_tophat(img, footprint_rectangle((3, 3)))
  np.testing.assert_allclose(np.asarray(baselines.top_hat(jnp.asarray(img)))[2:-2, 2:-2],
                             ref[2:-2, 2:-2], atol=1e-6)


def test_max_median():
  # Spike: every 3-pixel line median is 0 -> output = 9.
  np.testing.assert_allclose(np.asarray(baselines.max_median(jnp.asarray(_spike())))[7, 7], 9.0)
  # On a horizontal 3-pixel bar the horizontal median at its centre is the bar: output 0.
  bar = np.zeros((9, 9), np.float32)
  bar[4, 3:6] = 4.0
  out = np.asarray(baselines.max_median(jnp.asarray(bar)))
  assert out[4, 4] == 0.0
  # Its ends: horizontal median at (4, 3) is median(0, 4, 4) = 4 -> 0 too; elsewhere >= 0.
  assert out[4, 3] == 0.0 and out.min() >= 0.0
  with pytest.raises(ValueError, match="odd"):
    baselines.max_median(jnp.asarray(bar), 4)


def test_mpcm_by_hand():
  # Spike of 9 on 0: scale 3 centre mean 1, all 8 neighbour patches 0 -> d = 1, PCM = 1;
  # scale 5: (9/25)^2; 7, 9 smaller. MPCM = max = 1 at the spike, 0 far away.
  out = np.asarray(baselines.mpcm(jnp.asarray(_spike((41, 41), (20, 20)))))
  assert out[20, 20] == pytest.approx(1.0, rel=1e-6)
  assert out[0, 0] == 0.0 and out.min() >= 0.0
  only5 = np.asarray(baselines.mpcm(jnp.asarray(_spike((41, 41), (20, 20))), scales=(5,)))
  assert only5[20, 20] == pytest.approx((9 / 25) ** 2, rel=1e-6)


def test_adaptive_threshold_by_hand():
  # G = [0, 0, 0, 10]: 0.7 max = 7; mean 2.5, std sqrt(18.75) = 4.33 -> 0.5 std + mean = 4.67.
  g = jnp.asarray([[0.0, 0.0], [0.0, 10.0]])
  v = jnp.ones((2, 2), bool)
  assert float(baselines.adaptive_threshold(g, v)) == pytest.approx(7.0)
  # EAAU-Net eq. 17: 0.5 * 2.5 + 0.5 * 10 = 6.25.
  assert float(baselines.adaptive_threshold(g, v, "eaau_net")) == pytest.approx(6.25)
  # Invalid pixels are ignored: with the 10 masked out, G = 0 -> T = 0.
  assert float(baselines.adaptive_threshold(g, v.at[1, 1].set(False))) == 0.0
  with pytest.raises(ValueError, match="unknown threshold rule"):
    baselines.adaptive_threshold(g, v, "otsu")


def test_evaluate_batch_detects_bright_target():
  # Two images 32x32 with a bright 2x2 target on a smooth ramp: every baseline finds it.
  ramp = np.add.outer(np.arange(32), np.arange(32)).astype(np.float32) / 8
  image = np.stack([ramp, ramp.T])[..., None]
  mask = np.zeros_like(image)
  image[0, 10:12, 20:22] += 20
  mask[0, 10:12, 20:22] = 1
  image[1, 5:7, 5:7] += 20
  mask[1, 5:7, 5:7] = 1
  cfg = default.get_base_config().eval
  cfg.roc_thresholds = (0.5,)
  out = baselines.evaluate_batch(image, mask, np.ones_like(mask), cfg)
  assert set(out) == set(baselines.BASELINES)
  for name, o in out.items():
    stats = {k: np.asarray(v) for k, v in o["stats"].items()}
    assert stats["targets"].tolist() == [1.0, 1.0], name
    assert stats["matched"].tolist() == [1.0, 1.0], name
    assert np.asarray(o["hist"]).sum() == 2 * 32 * 32
    assert np.asarray(o["sweep"]["matched"]).tolist() == [[1.0, 1.0]], name
  # Without sweep thresholds: the same operating point and histograms, no target-level sweep.
  cfg.roc_thresholds = ()
  bare = baselines.evaluate_batch(image, mask, np.ones_like(mask), cfg)
  for name, o in bare.items():
    assert "sweep" not in o
    np.testing.assert_array_equal(np.asarray(o["hist"]), np.asarray(out[name]["hist"]))
    np.testing.assert_array_equal(np.asarray(o["stats"]["matched"]), [1.0, 1.0])
    evaluation = curves.Evaluation(cfg)
    evaluation.update(o)
    table, curve = evaluation.result()
    assert table["Pd"] == 1.0 and "target_roc" not in curve and 0.0 < table["AUC"] <= 1.0
  with pytest.raises(ValueError, match="unknown baseline"):
    baselines.evaluate_batch(image, mask, mask, cfg, names=("ipi",))
