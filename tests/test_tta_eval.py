"""Test-time augmentation of --mode=eval (`eval.tta`): predict's transforms inside the eval step.

TTA's transforms and averaging do not depend on the network: tiny flax networks (one that
commutes with the flips, one that does not) keep the compilations to seconds."""
import flax
import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import acm_unet
from irst_jax import config_checks, train
from irst_jax.evaluation import tta as tta_lib
from irst_jax.serving import detector
from tests.test_main import _tiny_config

SIZES = [(32, 32), (27, 30)]   # two images of one padded 32 x 32 batch


class _Conv(nn.Module):
  """Does not commute with the flips: 3 x 3 convolutions with random kernels."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.tanh(nn.Conv(4, (3, 3))(x))
    return nn.Conv(1, (3, 3))(x) + 0.3


class _Pointwise(nn.Module):
  """Commutes with the flips and the transpose: a 1 x 1 convolution."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Conv(1, (1, 1), kernel_init=nn.initializers.constant(2.0),
                   bias_init=nn.initializers.constant(-0.5))(x)


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


def _variables(model):
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 1), np.float32))["params"]
  return {"params": params}


_FUNCTIONS = {}
_MODEL = _Conv()   # the network of every `_scores` call (its jitted functions are cached by mode)


def _scores(images, tta):
  """Score maps [h, w] of `images` (in one zero-padded 32 x 32 batch) under TTA mode `tta`:
  `tta.average_scores` of the network jitted on the batch (sizes from `valid`, as the eval
  step does); with 'none', the sigmoid of the network on the batch."""
  image = np.zeros((len(images), 32, 32, 1), np.float32)
  valid = np.zeros_like(image)
  for i, x in enumerate(images):
    image[i, :x.shape[0], :x.shape[1], 0] = x
    valid[i, :x.shape[0], :x.shape[1], 0] = 1.0
  if tta not in _FUNCTIONS:
    variables = _variables(_MODEL)
    net = lambda x: _MODEL.apply(variables, x)
    _FUNCTIONS[tta] = jax.jit(
        (lambda x, v: jax.nn.sigmoid(net(x))) if tta == "none"
        else (lambda x, v: tta_lib.average_scores(net, x, tta_lib.image_sizes(v), tta)))
  scores = np.asarray(_FUNCTIONS[tta](image, valid))[..., 0]
  return [s[:x.shape[0], :x.shape[1]] for s, x in zip(scores, images)]


def _random_images(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=s).astype(np.float32) for s in SIZES]


def test_modes_and_transforms_are_predicts():
  assert tta_lib.TTA_MODES == detector.TTA_MODES
  x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)   # two images, the second 4 x 6
  x[1, 4:] = -1.0
  x[1, :, 6:] = -1.0
  sizes = np.array([[5, 7], [4, 6]], np.int32)
  np.testing.assert_array_equal(tta_lib.image_sizes((x > -1)[..., None]), sizes)
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
      assert (moved[1, hm:] == -1.0).all() and (moved[1, :, wm:] == -1.0).all()   # padding
      back = tta_lib.invert_transform(moved[..., None], np.asarray(moved_sizes), t)
      np.testing.assert_array_equal(np.asarray(back)[..., 0], x)
  with pytest.raises(ValueError, match="eval.tta='rot90'"):
    tta_lib.transforms("rot90")
  config = acm_unet.get_config()
  assert config.eval.tta == "none"
  config.eval.tta = "rot90"
  with pytest.raises(config_checks.ConfigError, match=r"^eval\.tta='rot90': unknown; expected "
                     "one of none, flips, flips_transpose$"):
    config_checks.check_eval(config)


@pytest.mark.parametrize("mode", ["flips", "flips_transpose"])
def test_tta_is_the_mean_probability_of_the_transformed_images(mode):
  """Independent check: predict's numpy transforms of each image, the network on each, the
  probabilities mapped back and averaged. TTA changes the scores of a non-symmetric image."""
  images = _random_images()
  got = _scores(images, mode)
  transforms = detector.tta_transforms(mode)
  expected = [np.zeros(x.shape, np.float64) for x in images]
  for t in transforms:
    moved = [np.ascontiguousarray(detector.apply_transform(x, t)) for x in images]
    for e, s in zip(expected, _scores(moved, "none")):
      e += detector.invert_transform(s, t) / len(transforms)
  for g, e, p in zip(got, expected, _scores(images, "none")):
    assert 0.0 < p.min() < p.max() < 1.0   # not saturated: the comparisons mean something
    np.testing.assert_allclose(g, e, rtol=0, atol=2e-6)
    assert np.abs(g - p).max() > 1e-3


def test_tta_is_exactly_equivariant():
  """TTA of flipped (transposed) images is the flipped TTA, bit for bit; so on an image
  symmetric under the flips the TTA map is exactly symmetric, the network's own is not."""
  images = _random_images(1)
  got = _scores(images, "flips_transpose")
  for t in [(False, True, False), (False, False, True), (True, True, False)]:
    moved = [np.ascontiguousarray(detector.apply_transform(x, t)) for x in images]
    for g, m in zip(got, _scores(moved, "flips_transpose")):
      np.testing.assert_array_equal(m, detector.apply_transform(g, t))
  top = np.concatenate([images[1][:14, :15], images[1][:14, :15][:, ::-1]], axis=1)
  symmetric = [np.concatenate([top, top[-2::-1]])]   # 27 x 30, mirrored copies
  np.testing.assert_array_equal(symmetric[0], symmetric[0][::-1, ::-1])
  (s,) = _scores(symmetric, "flips")
  np.testing.assert_array_equal(s, s[::-1])
  np.testing.assert_array_equal(s, s[:, ::-1])
  (plain,) = _scores(symmetric, "none")
  assert np.abs(plain - plain[::-1]).max() > 1e-4


def _evaluate(config, model, mode):
  config.eval.tta = mode
  state = train.replicate(_State(params=_variables(model)["params"], batch_stats={}))
  return train.evaluate(train.make_eval_step(model, config.eval, curves=True), state, config,
                        "test", keep_images=6)


def test_eval_step_with_tta(prepared_fake_nuaa):
  """`train.evaluate` of a TTA eval step (what --mode=eval --tta runs) on the fake NUAA-SIRST
  test split (images of several sizes on one padded canvas): with a network that commutes with
  the flips, every transform's probability maps back to the same value, so TTA gives the
  statistics and scores of no TTA exactly; with one that does not, other scores and AUC."""
  config = _tiny_config(prepared_fake_nuaa)
  config.eval.roc_thresholds = ()   # the sweep is not what is tested here
  plain, _, plain_kept = _evaluate(config, _Pointwise(), "none")
  assert 0.0 < plain["IoU"] < 1.0 and plain["images"] == 6
  for mode in ("flips", "flips_transpose"):
    values, _, kept = _evaluate(config, _Pointwise(), mode)
    assert values == plain
    for k, p in zip(kept, plain_kept, strict=True):
      assert k["name"] == p["name"] and (p["score"] > 0.5).any() and (p["score"] < 0.5).any()
      np.testing.assert_array_equal(k["score"], p["score"])
  values, _, kept = _evaluate(config, _Conv(), "flips")
  plain, _, plain_kept = _evaluate(config, _Conv(), "none")
  assert values["AUC"] != pytest.approx(plain["AUC"], abs=1e-6)
  for k, p in zip(kept, plain_kept, strict=True):
    assert k["name"] == p["name"] and np.abs(k["score"] - p["score"]).max() > 1e-4
  config.eval.tta = "rot90"
  with pytest.raises(ValueError, match="eval.tta='rot90'"):
    train.make_eval_step(_Conv(), config.eval)
