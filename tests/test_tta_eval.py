"""Test-time augmentation of --mode=eval (`eval.tta`): predict's transforms inside the eval step."""
import json

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import acm_unet
from irst_jax import optim, train
from irst_jax.evaluation import tta as tta_lib
from irst_jax.serving import detector
from tests.test_main import _tiny_config

SIZES = [(32, 32), (27, 30)]   # two images of one padded 32 x 32 batch


def _config(tta="none"):
  config = acm_unet.get_config("nuaa_sirst,smoke")
  config.model.channels = (4, 8, 8, 16)   # _tiny_config's network
  config.model.num_blocks = 1
  config.eval.tta = tta
  config.eval.roc_thresholds = ()          # the sweep is not what is tested here
  return config


@pytest.fixture(scope="module")
def acm_state():
  config = _config()
  model = train.models.create_model(config.model, axis_name=train.AXIS)
  tx, _ = optim.create_optimizer(config.optim, 1, 1)
  return model, train.replicate(train.create_train_state(model, config, tx, (1, 32, 32, 1)))


def _batch(images):
  """An eval batch [1, b, 32, 32, 1] of images [h, w] at the top-left (one device)."""
  image = np.zeros((1, len(images), 32, 32, 1), np.float32)
  valid = np.zeros_like(image)
  mask = np.zeros_like(image)
  for i, x in enumerate(images):
    h, w = x.shape
    image[0, i, :h, :w, 0] = x
    valid[0, i, :h, :w, 0] = 1.0
    mask[0, i, h // 2, w // 3, 0] = 1.0
  return {"image": image, "mask": mask, "valid": valid}


def _scores(model, state, images, tta):
  out = train.make_eval_step(model, _config(tta).eval, curves=True)(state, _batch(images))
  scores = np.asarray(out["scores"])[0, ..., 0]
  return [s[:x.shape[0], :x.shape[1]] for s, x in zip(scores, images)], out


def _random_images(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=s).astype(np.float32) for s in SIZES]


def test_modes_and_transforms_are_predicts():
  assert tta_lib.TTA_MODES == detector.TTA_MODES
  x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)   # two images, the second 4 x 6
  x[1, 4:] = -1.0
  x[1, :, 6:] = -1.0
  sizes = np.array([[5, 7], [4, 6]], np.int32)
  for mode in tta_lib.TTA_MODES:
    assert tta_lib.transforms(mode) == detector.tta_transforms(mode)
    for t in tta_lib.transforms(mode):
      moved, moved_sizes = tta_lib.apply_transform(x[..., None], sizes, t)
      moved = np.asarray(moved)[..., 0]
      for i, (h, w) in enumerate(sizes):
        expected = detector.apply_transform(x[i, :h, :w], t)
        hm, wm = expected.shape
        assert tuple(np.asarray(moved_sizes[i])) == (hm, wm)
        np.testing.assert_array_equal(moved[i, :hm, :wm], expected)
        assert (moved[i, hm:] == -1.0).all() and (moved[i, :, wm:] == -1.0).all() or i == 0
      back = tta_lib.invert_transform(moved[..., None], np.asarray(moved_sizes), t)
      np.testing.assert_array_equal(np.asarray(back)[..., 0], x)
  with pytest.raises(ValueError, match="eval.tta='rot90'"):
    tta_lib.transforms("rot90")


@pytest.mark.parametrize("mode", ["flips", "flips_transpose"])
def test_eval_tta_is_the_mean_probability_of_the_transformed_images(acm_state, mode):
  """Independent check: predict's numpy transforms of each image, the no-TTA eval step on each,
  the probabilities mapped back and averaged. TTA changes the scores of a non-symmetric image."""
  model, state = acm_state
  images = _random_images()
  got, _ = _scores(model, state, images, mode)
  transforms = detector.tta_transforms(mode)
  expected = [np.zeros(x.shape, np.float64) for x in images]
  for t in transforms:
    moved = [np.ascontiguousarray(detector.apply_transform(x, t)) for x in images]
    scores, _ = _scores(model, state, moved, "none")
    for e, s in zip(expected, scores):
      e += detector.invert_transform(s, t) / len(transforms)
  plain, _ = _scores(model, state, images, "none")
  for g, e, p in zip(got, expected, plain):
    assert 0.0 < p.min() < p.max() < 1.0   # not saturated: the comparisons mean something
    np.testing.assert_allclose(g, e, rtol=0, atol=2e-6)
    assert np.abs(g - p).max() > 1e-3


def test_eval_tta_is_exactly_equivariant(acm_state):
  """TTA of flipped (transposed) images is the flipped TTA, bit for bit; so on an image
  symmetric under the flips the TTA map is exactly symmetric."""
  model, state = acm_state
  images = _random_images(1)
  got, _ = _scores(model, state, images, "flips_transpose")
  for t in [(False, True, False), (False, False, True), (True, True, False)]:
    moved = [np.ascontiguousarray(detector.apply_transform(x, t)) for x in images]
    moved_got, _ = _scores(model, state, moved, "flips_transpose")
    for g, m in zip(got, moved_got):
      np.testing.assert_array_equal(m, detector.apply_transform(g, t))
  x = images[1]
  symmetric = [x + x[::-1] + x[:, ::-1] + x[::-1, ::-1]]   # 27 x 30
  (s,), _ = _scores(model, state, symmetric, "flips")
  np.testing.assert_array_equal(s, s[::-1])
  np.testing.assert_array_equal(s, s[:, ::-1])
  (plain,), _ = _scores(model, state, symmetric, "none")
  assert np.abs(plain - plain[::-1]).max() > 1e-4   # the network alone is not symmetric


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


class _Pointwise(nn.Module):
  """A flip- and transpose-equivariant network: a 1 x 1 convolution."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Conv(1, (1, 1), kernel_init=nn.initializers.constant(2.0),
                   bias_init=nn.initializers.constant(-0.5))(x)


@pytest.mark.parametrize("mode", ["flips", "flips_transpose"])
def test_eval_tta_of_an_equivariant_network_equals_no_tta(mode):
  """With a network that commutes with the flips, every transform's probability maps back to
  the same value, and TTA gives the scores and statistics of no TTA exactly."""
  model = _Pointwise()
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 1), np.float32))["params"]
  state = train.replicate(_State(params=params, batch_stats={}))
  images = _random_images(2)
  got, out = _scores(model, state, images, mode)
  plain, plain_out = _scores(model, state, images, "none")
  for g, p in zip(got, plain):
    assert (g > 0.5).any() and (g < 0.5).any()
    np.testing.assert_array_equal(g, p)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(out["stats"]),
               jax.device_get(plain_out["stats"]))


def test_evaluate_workdir_with_tta(prepared_fake_nuaa, tmp_path):
  """`evaluate_workdir(tta=...)` (--mode=eval --tta): the report in `<which>_<split>_tta_<mode>`,
  the metrics of the mean probabilities (thresholded in score units)."""
  config = _tiny_config(prepared_fake_nuaa)
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  plain = train.evaluate_workdir(str(workdir))
  values = train.evaluate_workdir(str(workdir), tta="flips")
  report = json.loads((workdir / "eval" / "best_test_tta_flips" / "metrics.json").read_text())
  assert report["metrics"]["AUC"] == pytest.approx(values["AUC"])
  assert report["title"].endswith(", tta flips")
  assert (workdir / "eval" / "best_test" / "metrics.json").exists()
  assert values["AUC"] != pytest.approx(plain["AUC"], abs=1e-6)   # other scores
  assert 0.0 <= values["IoU"] <= 1.0 and values["images"] == plain["images"]
  with pytest.raises(ValueError, match="eval.tta='rot90'"):
    train.evaluate_workdir(str(workdir), tta="rot90")
