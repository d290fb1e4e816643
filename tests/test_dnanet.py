"""DNA-Net: golden vectors of the official PyTorch model, parameter counts, train mode, variants."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dnanet as dnanet_config
from irst_jax import checkpoints, convert, models
from irst_jax.models import attention, dnanet, layers
from tests import golden


def _shapes(model, x):
  """The model's variables as shapes only (no compilation of the large init)."""
  return jax.eval_shape(model.init, jax.random.key(0), x)


def _random_variables(model, x, seed=0):
  """Random variables of the model's shapes (compiling `model.init` takes ~45 s on CPU):
  weights N(0, 0.3^2), running means 0, running variances 1."""
  rng = np.random.default_rng(seed)
  shapes = _shapes(model, x)
  return {"params": jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                                 shapes["params"]),
          "batch_stats": jax.tree_util.tree_map_with_path(
              lambda path, s: np.full(s.shape, path[-1].key == "var", np.float32),
              shapes["batch_stats"])}


def test_dnanet_matches_reference_on_all_four_maps():
  state, (x,), expected, meta = golden.load("dnanet.npz")
  assert x.shape[-1] == 3 and len(expected) == 4
  model = dnanet.DNANet()
  variables = convert.convert_state_dict(state, convert.dnanet_rules((2, 2, 2, 2)),
                                         _shapes(model, x))
  outputs = jax.jit(model.apply)(variables, x)
  assert meta["tolerance"] == "atol 1e-4"
  assert len(outputs) == 4
  for out, want in zip(outputs, expected):
    assert out.shape == want.shape == x.shape[:3] + (1,)
    np.testing.assert_allclose(out, want, atol=1e-4)


@pytest.mark.parametrize("in_channels, count", [(1, 4_696_568), (3, 4_696_888)])
def test_parameter_counts(in_channels, count):
  variables = _shapes(dnanet.DNANet(), jnp.zeros((1, 32, 32, in_channels)))
  assert layers.count_params(variables["params"]) == count


def test_converter_names_missing_tensor():
  state, (x,), _, _ = golden.load("dnanet.npz")
  reference = _shapes(dnanet.DNANet(), x)
  rules = convert.dnanet_rules()
  missing = {k: v for k, v in state.items() if k != "conv2_1.1.ca.fc2.weight"}
  with pytest.raises(convert.ConversionError, match=r"conv2_1\.1\.ca\.fc2\.weight"):
    convert.convert_state_dict(missing, rules, reference)
  misshaped = dict(state, **{"conv0_4_1x1.weight": np.zeros((16, 128, 1, 1), np.float32)})
  with pytest.raises(convert.ConversionError, match=r"conv0_4_1x1\.weight.*\(1, 1, 256, 16\)"):
    convert.convert_state_dict(misshaped, rules, reference)


def test_train_mode_tiny_input_gives_four_maps_and_updates_statistics():
  model = dnanet.DNANet(nb_filter=(4, 8, 16, 16, 32), num_blocks=(1, 2, 1, 1))
  x = jax.random.normal(jax.random.key(1), (1, 32, 32, 1))
  variables = _random_variables(model, x)
  outputs, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  assert len(outputs) == 4
  assert all(o.shape == (1, 32, 32, 1) for o in outputs)
  assert all(bool(jnp.all(jnp.isfinite(o))) for o in outputs)
  assert set(updates) == {"batch_stats"}
  mean = updates["batch_stats"]["conv2_0"]["block1"]["bn1"]["mean"]
  assert not np.allclose(mean, 0.0)
  # conv3_0 keeps 16 channels (nb_filter[2] == nb_filter[3]): identity shortcut there.
  assert "shortcut_conv" not in variables["params"]["conv3_0"]["block0"]
  rules = convert.dnanet_rules((1, 2, 1, 1), in_channels=1, nb_filter=(4, 8, 16, 16, 32))
  torch_like = convert.to_state_dict(variables, rules)   # the rules must cover every leaf
  round_trip = convert.convert_state_dict(torch_like, rules, variables)
  for a, b in zip(jax.tree_util.tree_leaves(round_trip), jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_single_head_without_deep_supervision_and_light_backbone():
  x = jnp.zeros((2, 16, 16, 1))
  model = dnanet.DNANet(backbone="resnet10_light", deep_supervision=False)
  variables = _random_variables(model, x)
  assert jax.jit(model.apply)(variables, x).shape == (2, 16, 16, 1)
  assert set(variables["params"]) >= {"final", "conv0_4_final"}
  # 8 channels // 16 = 0 hidden units: zero-size MLP, M_c = 0.5 (PyTorch's 0-channel convs)
  assert variables["params"]["conv0_0"]["block0"]["ca"]["fc1"]["kernel"].shape == (1, 1, 8, 0)


def test_light_backbone_zero_size_weights_survive_a_checkpoint(tmp_path):
  """Orbax refuses zero-size arrays; CheckpointStore saves placeholders and restores them."""
  model = dnanet.DNANet(backbone="resnet10_light", deep_supervision=False)
  variables = _random_variables(model, jnp.zeros((1, 16, 16, 1)), seed=3)
  store = checkpoints.CheckpointStore(tmp_path)
  store.save_latest(7, variables)
  restored = store.restore(jax.tree.map(np.zeros_like, variables))
  store.close()
  kernel = restored["params"]["conv0_0"]["block0"]["ca"]["fc1"]["kernel"]
  assert kernel.shape == (1, 1, 8, 0) and kernel.dtype == np.float32
  assert jax.tree.structure(restored) == jax.tree.structure(variables)
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_backbones_block_counts():
  x = jnp.zeros((1, 16, 16, 1))
  resnet34 = _shapes(dnanet.DNANet(backbone="resnet34"), x)["params"]
  assert {k for k in resnet34["conv3_0"]} == {"block0", "block1", "block2", "block3", "block4",
                                              "block5"}
  assert set(resnet34["conv0_1"]) == {"block0"}
  vgg = _shapes(dnanet.DNANet(backbone="vgg10"), x)["params"]
  assert "shortcut_conv" not in vgg["conv0_1"]["block0"]
  with pytest.raises(ValueError, match="resnet18"):
    dnanet.DNANet(backbone="resnet50").init(jax.random.key(0), x)


def test_bad_input_shape_is_named():
  with pytest.raises(ValueError, match=r"multiples of 16.*\(1, 24, 32, 1\)"):
    dnanet.DNANet().init(jax.random.key(0), jnp.ones((1, 24, 32, 1)))


def test_cbam_spatial_attention_hand_values():
  # A kernel seeing only the channel-max map at the centre: M_s = sigmoid(max_c x).
  module = attention.CBAMSpatialAttention(3)
  x = jnp.array([[[[1.0, -2.0], [0.0, 3.0]]]])   # [1, 1, 2, 2]
  kernel = jnp.zeros((3, 3, 2, 1)).at[1, 1, 1, 0].set(1.0)
  out = module.apply({"params": {"conv1": {"kernel": kernel}}}, x)
  np.testing.assert_allclose(out.reshape(-1), jax.nn.sigmoid(jnp.array([1.0, 3.0])), rtol=1e-6)


def test_config_builds_the_recipe():
  config = dnanet_config.get_config()
  assert (config.optim.optimizer, config.optim.learning_rate, config.optim.eps) == (
      "adagrad", 0.05, 1e-10)
  assert (config.optim.schedule, config.optim.min_lr) == ("cosine", 1e-5)
  assert (config.train.batch_size, config.train.num_epochs, config.dataset.crop_size) == (
      16, 1500, 256)
  model = models.create_model(config.model)
  assert isinstance(model, dnanet.DNANet) and model.resolved()[1] == (2, 2, 2, 2)
  params = _shapes(model, jnp.zeros((1, 32, 32, config.model.in_channels)))["params"]
  assert layers.count_params(params) == 4_696_568
