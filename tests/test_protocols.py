"""irst_jax.evaluation.protocols: basicirstd / basicirstd_2023 / dnanet give the answers of their
reference codes (hand-built cases, a numpy copy of the old PD_FA, PIL's resize)."""
from __future__ import annotations

import functools

import ml_collections
import numpy as np
import pytest
from PIL import Image
from skimage import measure

from irst_jax import config_checks, errors
from irst_jax.configs import default
from irst_jax.evaluation import curves, metrics, protocols

EPS = np.spacing(1)


# --------------------------------------------------------------------------- #
# Independent numpy copies of the reference PD_FA codes
# --------------------------------------------------------------------------- #
class OldBasicIRSTDPdFa:
  """BasicIRSTD metrics.py PD_FA before 2024-01-25 (b75ecc8), statement by statement (numpy
  and skimage; `preds` / `labels` are [H, W] arrays instead of torch tensors)."""

  def __init__(self):
    self.dismatch_pixel = 0
    self.all_pixel = 0
    self.PD = 0
    self.target = 0

  def update(self, preds, labels, size):
    predits = np.array(preds).astype('int64')
    labelss = np.array(labels).astype('int64')
    image = measure.label(predits, connectivity=2)
    coord_image = measure.regionprops(image)
    label = measure.label(labelss, connectivity=2)
    coord_label = measure.regionprops(label)
    self.target += len(coord_label)
    self.image_area_total = []
    self.image_area_match = []
    self.distance_match = []
    self.dismatch = []
    for K in range(len(coord_image)):
      area_image = np.array(coord_image[K].area)
      self.image_area_total.append(area_image)
    for i in range(len(coord_label)):
      centroid_label = np.array(list(coord_label[i].centroid))
      for m in range(len(coord_image)):
        centroid_image = np.array(list(coord_image[m].centroid))
        distance = np.linalg.norm(centroid_image - centroid_label)
        area_image = np.array(coord_image[m].area)
        if distance < 3:
          self.distance_match.append(distance)
          self.image_area_match.append(area_image)
          del coord_image[m]
          break
    self.dismatch = [x for x in self.image_area_total if x not in self.image_area_match]
    self.dismatch_pixel += np.sum(self.dismatch)
    self.all_pixel += size[0] * size[1]
    self.PD += len(self.distance_match)

  def get(self):
    return self.PD / self.target, self.dismatch_pixel / self.all_pixel


def _nhwc(arrays):
  return np.stack([np.asarray(a, np.float32) for a in arrays])[..., None]


def _config(protocol, **kw):
  """The eval section of `protocol`, small for fast compilations: dense labelling, no
  eval.roc_thresholds sweep (dnanet has its own), 8 histogram bins, 8 targets."""
  cfg = default.get_base_config().eval
  cfg.protocol = protocol
  cfg.max_pixels, cfg.roc_thresholds, cfg.num_bins, cfg.max_targets = None, (), 8, 8
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def _evaluate(values, mask, valid, cfg, threshold=0.0, values_units="logits"):
  """(table numbers, curves) of one batch through curves.evaluation_outputs (jit)."""
  import jax
  step = jax.jit(functools.partial(curves.evaluation_outputs, eval_config=cfg,
                                   values_units=values_units), static_argnums=(1,))
  scores = np.clip(values, 0, 1) if values_units == "scores" else 1 / (1 + np.exp(-values))
  evaluation = curves.Evaluation(cfg, values_units=values_units)
  evaluation.update(jax.device_get(step(values, threshold, scores, mask, valid)))
  return evaluation.result()


# --------------------------------------------------------------------------- #
# Fa rule: hand-built
# --------------------------------------------------------------------------- #
def _frame():
  """16x16: a 2x2 target matched by a 2x2 prediction (area 4), an unmatched 2x2 false alarm
  (area 4, equal to the matched area) and an unmatched 1x3 false alarm (area 3)."""
  gt = np.zeros((16, 16), bool)
  gt[2:4, 2:4] = True
  pred = np.zeros((16, 16), bool)
  pred[2:4, 2:4] = True       # matched, area 4
  pred[10:12, 10:12] = True   # false alarm, area 4
  pred[13, 0:3] = True        # false alarm, area 3
  return pred, gt


def test_area_rule_leaves_out_a_false_alarm_of_the_matched_area():
  pred, gt = _frame()
  logits = _nhwc([np.where(pred, 4.0, -4.0)])
  args = (logits, _nhwc([gt]), np.ones_like(logits))
  pixels = metrics.batch_statistics(*args, max_pixels=None)
  area = metrics.batch_statistics(*args, max_pixels=None, fa_rule="area")
  assert float(pixels["false_alarm_pixels"][0]) == 4 + 3   # both false alarms
  assert float(area["false_alarm_pixels"][0]) == 3         # the area-4 one left out
  for stats in (pixels, area):
    assert float(stats["matched"][0]) == 1 and float(stats["targets"][0]) == 1
  # The same through the protocols of the config.
  for name, fa in (("basicirstd", 7), ("basicirstd_2023", 3)):
    values, _ = _evaluate(logits, args[1], args[2], _config(name))
    assert values["Fa"] == fa / 256 and values["Pd"] == 1.0, name
    assert values["IoU"] == pytest.approx(4 / (EPS + 11), rel=1e-12)


def test_area_rule_is_per_image_and_drops_all_components_of_a_matched_area():
  """Image 0: two targets, both matched by area-1 predictions, and false alarms of areas 1, 1
  and 2 -> only the area-2 one counts (2 pixels; 4 under basicirstd). Image 1: no target
  matched (a 1-pixel prediction 5 px away) -> its area-1 false alarm counts: the matched
  areas of image 0 do not carry over (the reference resets the list per image)."""
  gt0 = np.zeros((12, 12), bool)
  gt0[1, 1] = gt0[8, 8] = True
  pred0 = np.zeros((12, 12), bool)
  pred0[1, 2] = pred0[8, 8] = True       # matched (distance 1 and 0), area 1 each
  pred0[5, 0] = pred0[0, 11] = True      # false alarms of area 1
  pred0[11, 0:2] = True                  # false alarm of area 2
  gt1 = np.zeros((12, 12), bool)
  gt1[2, 2] = True
  pred1 = np.zeros((12, 12), bool)
  pred1[7, 2] = True                     # 5 px from the target: a false alarm of area 1
  logits = _nhwc([np.where(p, 4.0, -4.0) for p in (pred0, pred1)])
  mask, valid = _nhwc([gt0, gt1]), np.ones_like(logits)
  area = metrics.batch_statistics(logits, mask, valid, max_pixels=None, fa_rule="area")
  pixels = metrics.batch_statistics(logits, mask, valid, max_pixels=None)
  np.testing.assert_array_equal(np.asarray(area["false_alarm_pixels"]), [2, 1])
  np.testing.assert_array_equal(np.asarray(pixels["false_alarm_pixels"]), [4, 1])
  np.testing.assert_array_equal(np.asarray(area["matched"]), [2, 0])
  ref = OldBasicIRSTDPdFa()
  for p, g in ((pred0, gt0), (pred1, gt1)):
    ref.update(p, g, p.shape)
  assert ref.get() == (2 / 3, 3 / 288)
  values, _ = _evaluate(logits, mask, valid, _config("basicirstd_2023"))
  assert values["Pd"] == 2 / 3 and values["Fa"] == 3 / 288


def _random_frames(n, shape, seed):
  """Frames with many small components of equal areas (1x1, 1x2, 2x2 boxes) and targets
  some of which are hit, so the area rule's coincidences happen often."""
  rng = np.random.default_rng(seed)
  h, w = shape
  out = []
  for _ in range(n):
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    for _ in range(rng.integers(0, 5)):
      th, tw = rng.integers(1, 3, size=2)
      r, c = rng.integers(0, h - 2), rng.integers(0, w - 2)
      gt[r:r + th, c:c + tw] = True
      if rng.random() < 0.7:   # detected, maybe shifted by a pixel, maybe another size
        dr, dc = rng.integers(-1, 2, size=2)
        ph, pw = rng.integers(1, 3, size=2)
        rr, cc = np.clip(r + dr, 0, h - 2), np.clip(c + dc, 0, w - 2)
        pred[rr:rr + ph, cc:cc + pw] = True
    for _ in range(rng.integers(0, 6)):   # false alarms
      fh, fw = rng.integers(1, 3, size=2)
      r, c = rng.integers(0, h - fh + 1), rng.integers(0, w - fw + 1)
      pred[r:r + fh, c:c + fw] = True
    out.append((pred, gt))
  return out


def test_area_rule_equals_the_old_basicirstd_code_on_random_frames():
  frames = _random_frames(40, (24, 32), seed=0)
  preds, gts = zip(*frames)
  logits = _nhwc([np.where(p, 4.0, -4.0) for p in preds])
  mask, valid = _nhwc(gts), np.ones_like(logits)
  # max_pixels=48: one compacted tier (then the dense fallback), cheaper to compile.
  compacted = metrics.batch_statistics(logits, mask, valid, fa_rule="area", max_pixels=48)
  dense = metrics.batch_statistics(logits, mask, valid, fa_rule="area", max_pixels=None)
  for i, (p, g) in enumerate(frames):
    ref = OldBasicIRSTDPdFa()
    ref.update(p, g, p.shape)
    for stats in (compacted, dense):
      assert float(stats["false_alarm_pixels"][i]) == ref.dismatch_pixel, i
      assert float(stats["matched"][i]) == ref.PD and float(stats["targets"][i]) == ref.target
  pixels = metrics.batch_statistics(logits, mask, valid, max_pixels=None)
  diff = np.asarray(pixels["false_alarm_pixels"]) - np.asarray(compacted["false_alarm_pixels"])
  assert np.all(diff >= 0) and np.sum(diff > 0) >= 5   # the rules differ on many frames
  # Whole-set numbers equal the reference's get().
  ref = OldBasicIRSTDPdFa()
  for p, g in frames:
    ref.update(p, g, p.shape)
  accumulator = metrics.MetricAccumulator()
  accumulator.update(compacted)
  values = accumulator.result()
  pd, fa = ref.get()
  assert values["Pd"] == pytest.approx(pd, rel=1e-12) and values["Fa"] == pytest.approx(fa, rel=1e-12)


def test_area_rule_in_the_threshold_sweep_equals_the_reference_at_each_threshold():
  rng = np.random.default_rng(5)
  frames = _random_frames(12, (20, 20), seed=3)
  scores = [np.where(p, rng.uniform(0.3, 1.0, p.shape), rng.uniform(0, 0.25, p.shape))
            for p, _ in frames]
  thresholds = np.array([0.2, 0.5, 0.8], np.float32)
  s, m = _nhwc(scores), _nhwc([g for _, g in frames])
  sweep = metrics.sweep_statistics(s, m, np.ones_like(s), thresholds, fa_rule="area",
                                   max_pixels=None)
  for k, t in enumerate(thresholds):
    for i, (score, (_, g)) in enumerate(zip(scores, frames)):
      ref = OldBasicIRSTDPdFa()
      ref.update(score.astype(np.float32) > t, g, g.shape)
      assert float(sweep["false_alarm_pixels"][k, i]) == ref.dismatch_pixel, (t, i)


# --------------------------------------------------------------------------- #
# dnanet: resize and sweep
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("h,w", [(100, 140), (300, 520), (256, 256), (57, 391)])
def test_resize_equals_pil_bilinear_and_nearest(h, w):
  rng = np.random.default_rng(h * w)
  image = rng.uniform(0, 1, (h, w)).astype(np.float32)
  mask = rng.random((h, w)) < 0.3
  canvas = (((h + 31) // 32) * 32 + 32, ((w + 31) // 32) * 32)   # padding must not leak in
  padded = np.full(canvas, 7.0, np.float32)
  padded[:h, :w] = image
  mask_c = np.zeros(canvas, np.float32)
  mask_c[:h, :w] = mask
  mask_c[h:, :] = 1.0   # garbage beyond the image, ignored
  valid = np.zeros(canvas, np.float32)
  valid[:h, :w] = 1
  got_i, got_m, got_v = protocols.resize_batch(padded[None, :, :, None], mask_c[None, :, :, None],
                                               valid[None, :, :, None], 256)
  pil_i = np.asarray(Image.fromarray(image).resize((256, 256), Image.BILINEAR))
  pil_m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((256, 256),
                                                                          Image.NEAREST)) > 0
  np.testing.assert_allclose(np.asarray(got_i)[0, ..., 0], pil_i, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got_m)[0, ..., 0] > 0, pil_m)
  assert np.all(np.asarray(got_v) == 1)


def test_network_batch_resizes_only_under_dnanet_and_keeps_dummies_invalid():
  image = np.zeros((1, 2, 64, 96, 1), np.float32)
  mask = np.zeros((1, 2, 64, 96, 1), np.float32)
  valid = np.zeros((1, 2, 64, 96, 1), np.float32)
  valid[0, 0, :50, :70] = 1        # image 1 is a dummy (valid all 0)
  image[0, 0, :50, :70] = 2.0
  batch = {"image": image, "mask": mask, "valid": valid, "name": np.array([["a", ""]])}
  same = protocols.network_batch(_config("basicirstd_2023"), batch)
  assert same["image"] is image and same["valid"] is valid
  out = protocols.network_batch(_config("dnanet"), batch)
  assert out["image"].shape == (1, 2, 256, 256, 1) and out["valid"].shape == (1, 2, 256, 256, 1)
  np.testing.assert_allclose(np.asarray(out["image"][0, 0]), 2.0, rtol=1e-6)
  assert np.all(np.asarray(out["valid"][0, 0]) == 1) and np.all(np.asarray(out["valid"][0, 1]) == 0)
  assert out["name"] is batch["name"]


def test_resize_to_256_changes_pd_by_hand():
  """512x512 frame: a 2x2 target at rows/cols 100-101 and a 2x2 prediction at rows 104-105,
  cols 100-101 (centroids 4 px apart: missed at the original size, 4 false alarm pixels).
  At 256 (dnanet): the mask's nearest samples are source rows/cols 2i+1, so the target is the
  single pixel (50, 50); the prediction's bilinear weights (support 2 when halving) are
  0.375 + 0.375 at row 52 and col 50 (0.125 at rows 51, 53 and cols 49, 51), so only
  (52, 50) scores 0.5625 > 0.5: 2 px from the target, matched, no false alarm."""
  gt = np.zeros((512, 512), bool)
  gt[100:102, 100:102] = True
  pred = np.zeros((512, 512), bool)
  pred[104:106, 100:102] = True
  scores, mask = _nhwc([pred]), _nhwc([gt])
  valid = np.ones_like(mask)
  base, _ = _evaluate(scores, mask, valid, _config("basicirstd"), 0.5, "scores")
  old, _ = _evaluate(scores, mask, valid, _config("basicirstd_2023"), 0.5, "scores")
  for values in (base, old):
    assert values["Pd"] == 0.0 and values["Fa"] == 4 / 512 ** 2 and values["IoU"] == 0.0
  cfg = _config("dnanet")
  resized = protocols.network_batch(cfg, {"image": scores, "mask": mask, "valid": valid})
  r_mask, r_score = np.asarray(resized["mask"])[0, ..., 0], np.asarray(resized["image"])[0, ..., 0]
  assert np.argwhere(r_mask).tolist() == [[50, 50]]
  assert np.argwhere(r_score > 0.5).tolist() == [[52, 50]]
  assert r_score[52, 50] == pytest.approx(0.5625, abs=1e-6)
  dna, dna_curves = _evaluate(resized["image"], resized["mask"], resized["valid"], cfg, 0.5,
                              "scores")
  assert dna["Pd"] == 1.0 and dna["Fa"] == 0.0 and dna["images"] == 1
  # The sweep of the score-map reading: thresholds i / 10 (v > 25.5 i on 8 bits).
  t = dna_curves["target_roc"]
  np.testing.assert_allclose(t["thresholds"], np.arange(11) / 10, rtol=1e-6)
  pred_max = r_score.max()   # 0.5625: detected at thresholds 0.0 .. 0.5
  assert t["Pd"].tolist() == [1.0 if i / 10 < pred_max else 0.0 for i in range(11)]


def test_dnanet_sweep_thresholds_the_logits_at_25_5_steps():
  """Logits: a target hit with logit 30 (detected for i = 0, 1), a false alarm of area 1 with
  logit 60 (i = 0..2) and one of area 2 with logit 5 (i = 0 only). Area rule: the area-1
  false alarm is dropped while the target (area 1) is matched."""
  gt = np.zeros((16, 16), bool)
  gt[4, 4] = True
  logits = np.full((16, 16), -10.0, np.float32)
  logits[4, 4] = 30.0
  logits[12, 12] = 60.0
  logits[0, 8:10] = 5.0
  values, result = _evaluate(_nhwc([logits]), _nhwc([gt]), np.ones((1, 16, 16, 1), np.float32),
                             _config("dnanet"))
  t = result["target_roc"]
  assert t["thresholds"].tolist() == [25.5 * i for i in range(11)]
  assert t["Pd"].tolist() == [1, 1] + [0] * 9
  # i = 0: matched area 1 -> area-1 false alarm dropped, area 2 counts; i = 1: only the
  # target and the logit-60 pixel remain (dropped); i = 2: the logit-60 pixel alone counts.
  assert (t["Fa"] * 256).tolist() == [2, 0, 1] + [0] * 8
  assert values["Pd"] == 1.0 and values["Fa"] == 2 / 256   # operating point: logit > 0


# --------------------------------------------------------------------------- #
# definitions and config
# --------------------------------------------------------------------------- #
def test_definitions_and_config_checks():
  assert sorted(protocols.PROTOCOLS) == ["basicirstd", "basicirstd_2023", "dnanet"]
  assert default.get_base_config().eval.protocol == protocols.DEFAULT == "basicirstd"
  assert protocols.get(ml_collections.ConfigDict({"threshold": 0.5})).name == "basicirstd"
  dna = protocols.get("dnanet")
  assert (dna.fa_rule, dna.input_size, len(dna.sweep_logits)) == ("area", 256, 11)
  assert protocols.get("basicirstd_2023").fa_rule == "area"
  assert protocols.get("basicirstd").fa_rule == "pixels"
  with pytest.raises(errors.UserError, match=r"eval.protocol='dna': expected one of"):
    protocols.get("dna")
  config = default.get_base_config()
  config.eval.protocol = "bogus"
  with pytest.raises(config_checks.ConfigError, match=r"eval.protocol"):
    config_checks.check_eval(config)
  for name in protocols.PROTOCOLS:
    config.eval.protocol = name
    config_checks.check_eval(config)
  with pytest.raises(ValueError, match=r"fa_rule='areas'"):
    metrics.batch_statistics(*[np.zeros((1, 4, 4, 1), np.float32)] * 3, fa_rule="areas")


def test_baselines_take_the_fa_rule_and_refuse_dnanet():
  from irst_jax.evaluation import baselines
  image = np.zeros((1, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match=r"eval.protocol='dnanet' is not available"):
    baselines.evaluate_batch(image, image, image + 1, _config("dnanet"))
  assert protocols.get(baselines._Frozen(_config("basicirstd_2023"))).fa_rule == "area"
