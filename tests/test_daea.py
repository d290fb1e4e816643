"""DAEA: parameter counts derived by hand, eq. 1's wiring, the symmetric / SE attentions
against numpy, every ablation family building and taking a training step, the recipe."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from configs import daea as daea_config
from irst_jax import models, optim, train
from irst_jax.models import attention, daea, layers


def _random_variables(model, *inputs, seed=0):
  """Variables of `model` for `inputs` without running its initialisers (XLA compiles the
  truncated-normal initialisers slowly on CPU): He-scaled normal kernels, BN scales near 1,
  small other vectors, running mean 0 / variance 1."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("mean", "var"):
      return jnp.full(leaf.shape, float(name == "var"), jnp.float32)
    if name == "kernel":
      std = np.sqrt(2.0 / max(1, int(np.prod(leaf.shape[:-1]))))
    else:
      std = 0.1
    value = rng.normal(scale=std, size=leaf.shape) + float(name == "scale")
    return jnp.asarray(value, jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _count(model_config, size=32):
  model = models.create_model(model_config)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 1)))
  return layers.count_params(variables["params"]), variables["params"]


# By hand, channels (8, 16, 32, 64), SA groups 4, grey input:
# - stem: input BN 2, conv3x3 1->16 144, BN 32 = 178;
# - AAM-block (C_in -> C): 9 C_in C + 2C + 9 C^2 + 2C + SA 6 C/8 (+ shortcut C_in C + 2C):
#   stage 0 (16): 2,304 + 32 + 2,304 + 32 + 12 = 4,684 per block;
#   stage 1 (32): first 4,608 + 64 + 9,216 + 64 + 24 + 576 = 14,552, others 18,584;
#   stage 2 (64): first 18,432 + 128 + 36,864 + 128 + 48 + 2,176 = 57,776, others 74,032;
# - Agg node (C, deep C_h): feature_high C_h C + C + 2C; two ACM attentions of
#   C^2 / 2 + 3.75 C each (C = 16: 188, C = 32: 632); post conv 9 C^2 + C + BN 2C:
#   C = 16 (C_h 32): 560 + 376 + 2,352 = 3,288; C = 32 (C_h 64): 2,144 + 1,264 + 9,312 = 12,720;
#   iterative: L^{1,0}, L^{1,1}, L^{2,0} = 3,288 + 12,720 + 3,288 = 19,296;
# - FCN head (16): conv3x3 16->4 576, BN 8, conv1x1 4->1 + bias 5 = 589.
S1 = 178 + 4_684 + 14_552 + 57_776 + 19_296 + 589
PER_BLOCK = 4_684 + 18_584 + 74_032   # one more block in each stage


def test_parameter_count_by_hand_for_every_s():
  assert S1 == 97_075 and PER_BLOCK == 97_300
  config = daea_config.get_config().model
  for s in range(1, 7):
    config.num_blocks = s
    count, params = _count(config)
    print(f"DAEA S={s}: {count:,} parameters")
    assert count == S1 + (s - 1) * PER_BLOCK
    assert sum(k.startswith("ext2_") for k in params) == s
  assert S1 + 2 * PER_BLOCK == 291_675   # the default, S = 3


@pytest.mark.parametrize("field, value, delta", [
    # S = 3 blocks a stage; SA params a block: 6 C/8 = 12, 24, 48 (C = 16, 32, 64)
    ("extraction", "none", -3 * (12 + 24 + 48)),
    ("extraction", "sa_both_global", -3 * (4 + 8 + 16)),   # 4 instead of 6 C/(2G) vectors
    ("extraction", "sa_both_local", 3 * (4 + 8 + 16)),     # 8 instead of 6
    # CBAM: MLP 2 C^2/16 (no bias) + 7x7x2 spatial conv = 130, 226, 610
    ("extraction", "cbam", 3 * (130 + 226 + 610 - 12 - 24 - 48)),
    # SE (r = 16, biases): 2 C h + h + C with h = C/16 = 49, 162, 580
    ("extraction", "se", 3 * (49 + 162 + 580 - 12 - 24 - 48)),
    ("fusion", "direct_add", -(188 * 2 * 2 + 632 * 2)),     # the attentions of 3 nodes
    ("fusion", "bi_global", 0),
    ("fusion", "bi_local", 0),
    ("aggregation", "unet", -3_288),                         # no L^{2,0}: 2 nodes
])
def test_ablation_parameter_counts(field, value, delta):
  config = daea_config.get_config().model
  config[field] = value
  count, _ = _count(config)
  print(f"DAEA {field}={value}: {count:,} parameters")
  assert count == 291_675 + delta


def test_wiring_follows_equation_1():
  # Recompute every aggregation node from the captured stage outputs with the node's own
  # parameters: iterative L^{i,j} = Agg(L^{i-1,j}, U(L^{i-1,j+1})), or the U-Net decoder.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 1)), jnp.float32)
  for aggregation, nodes in (("iterative", {"agg1_0": ("ext0_0", "ext1_0"),
                                            "agg1_1": ("ext1_0", "ext2_0"),
                                            "agg2_0": ("agg1_0", "agg1_1")}),
                             ("unet", {"skip1": ("ext1_0", "ext2_0"),
                                       "skip0": ("ext0_0", "skip1")})):
    model = daea.DAEA(num_blocks=1, aggregation=aggregation)
    variables = _random_variables(model, x)
    apply = jax.jit(lambda v, m=model: m.apply(v, x, capture_intermediates=True))
    logits, state = apply(variables)
    out = {k: v["__call__"][0] for k, v in state["intermediates"].items() if k != "__call__"}
    assert logits.shape == (2, 16, 16, 1)
    assert [out[f"ext{j}_0"].shape for j in range(3)] == [
        (2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64)]
    assert set(out) == {"stem", "ext0_0", "ext1_0", "ext2_0", "head", *nodes}
    for node, (shallow, deep) in nodes.items():
      fusion = attention.CrossLayerFusion(out[shallow].shape[-1], "asym_bi", True,
                                          layers.batch_norm(False))
      up = jax.image.resize(out[deep], out[shallow].shape[:3] + out[deep].shape[3:], "bilinear")
      expected = fusion.apply({c: v[node] for c, v in variables.items()}, up, out[shallow])
      np.testing.assert_allclose(out[node], expected, rtol=1e-5, atol=1e-5)


def _gate(part, w, b, kind, gn=None):
  mean = part.mean(axis=(1, 2), keepdims=True)
  if kind == "local":
    part_std = np.sqrt(part.var(axis=(1, 2), keepdims=True) + 1e-5)
    context = (part - mean) / part_std * gn[0] + gn[1]
  else:
    context = mean
  return part / (1 + np.exp(-(w * context + b)))


@pytest.mark.parametrize("branches", ["both_global", "both_local"])
def test_symmetric_shuffle_attention_against_numpy(branches):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 4, 16)).astype(np.float32)
  module = attention.ShuffleAttention(groups=2, branches=branches)
  params = jax.tree_util.tree_map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32),
      jax.eval_shape(module.init, jax.random.key(0), x)["params"])
  p = {k: np.asarray(v) for k, v in params.items()}
  kind = branches.split("_")[1]
  grouped = x.reshape(2, 5, 4, 2, 2, 4)   # (group, half, channel)
  halves = [_gate(grouped[..., 0, :], p["cweight"], p["cbias"], kind,
                  (p.get("c_gn_scale"), p.get("c_gn_bias"))),
            _gate(grouped[..., 1, :], p["sweight"], p["sbias"], kind,
                  (p.get("gn_scale"), p.get("gn_bias")))]
  out = np.stack(halves, axis=-2).reshape(2, 5, 4, 16)
  expected = out.reshape(2, 5, 4, 2, 8).swapaxes(-1, -2).reshape(2, 5, 4, 16)
  assert len(p) == (4 if kind == "global" else 8)
  np.testing.assert_allclose(module.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-5)


def test_squeeze_excitation_against_numpy():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 3, 3, 32)).astype(np.float32)
  module = attention.SqueezeExcitation(16)
  params = _random_variables(module, x)["params"]
  w1, b1 = np.asarray(params["fc1"]["kernel"])[0, 0], np.asarray(params["fc1"]["bias"])
  w2, b2 = np.asarray(params["fc2"]["kernel"])[0, 0], np.asarray(params["fc2"]["bias"])
  assert w1.shape == (32, 2) and w2.shape == (2, 32)
  hidden = np.maximum(x.mean(axis=(1, 2)) @ w1 + b1, 0.0)
  expected = 1 / (1 + np.exp(-(hidden @ w2 + b2)))
  np.testing.assert_allclose(module.apply({"params": params}, x)[:, 0, 0], expected, rtol=1e-5)


def test_direct_add_fusion_is_the_conv_of_the_sum():
  # Without reduction Z = post(xl + xh): swapping the inputs changes nothing.
  rng = np.random.default_rng(3)
  a, b = (jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32) for _ in range(2))
  module = attention.CrossLayerFusion(8, "direct_add", norm=layers.batch_norm(False))
  variables = _random_variables(module, a, b)
  assert set(variables["params"]) == {"post_conv", "post_bn"}
  np.testing.assert_allclose(module.apply(variables, a, b), module.apply(variables, b, a),
                             rtol=1e-6)


# One training step (the real pmapped step, soft-IoU, Adagrad 0.05) for each ablation family;
# together the models cover every extraction, fusion and aggregation option.
@pytest.mark.parametrize("extraction, fusion, aggregation", [
    ("sa", "asym_bi", "iterative"),
    ("none", "direct_add", "unet"),
    ("cbam", "bi_local", "iterative"),
    ("se", "bi_global", "unet"),
    ("sa_both_global", "asym_bi", "iterative"),
    ("sa_both_local", "asym_bi", "iterative"),
])
def test_every_variant_takes_a_training_step(extraction, fusion, aggregation):
  config = daea_config.get_config("nuaa_sirst")
  config.model.update(channels=(4, 8, 16, 32), num_blocks=1, sa_groups=2,
                      extraction=extraction, fusion=fusion, aggregation=aggregation)
  model = models.create_model(config.model, axis_name=train.AXIS)
  tx, schedule = optim.create_optimizer(config.optim, 1, 1)
  devices = jax.local_devices()[:1]
  variables = _random_variables(model, jnp.zeros((1, 16, 16, 1)))
  initial = train.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                    batch_stats=variables["batch_stats"], tx=tx,
                                    rng=jax.random.PRNGKey(0))
  state = train.replicate(initial, devices=devices)
  rng = np.random.default_rng(4)
  batch = {"image": rng.normal(size=(1, 2, 16, 16, 1)).astype(np.float32),
           "mask": (rng.random((1, 2, 16, 16, 1)) > 0.9).astype(np.float32)}
  step = train.make_train_step(model, config.train.loss, schedule, devices=devices)
  state, metrics = step(state, batch)
  assert 0.0 < float(metrics["loss"][0]) < 1.0
  after = jax_utils.unreplicate(state)
  for name in initial.params:   # Adagrad's first step moves every module with a gradient
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max(initial=0.0)),
                                   initial.params[name], after.params[name])
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-3, name


def test_recipe_per_dataset():
  for arg, epochs, builder, split, crop in (("nuaa_sirst", 500, "acm", "train", 256),
                                            ("nudt_sirst", 400, "50_50", "train", 256),
                                            ("mdvsfa_cgan", 50, "official", "train_half", 128)):
    c = daea_config.get_config(arg)
    assert (c.train.num_epochs, c.dataset.builder_config, c.dataset.train_split,
            c.dataset.eval_split, c.dataset.crop_size) == (epochs, builder, split, "test", crop)
    assert (c.optim.optimizer, c.optim.learning_rate, c.optim.schedule, c.train.batch_size,
            c.train.loss, c.eval.threshold) == ("adagrad", 0.05, "constant", 8, "soft_iou", 0.5)


@pytest.mark.parametrize("field, value, match", [
    ("extraction", "eca", r"extraction 'eca'.*cbam"),
    ("aggregation", "dense", r"aggregation 'dense'.*iterative"),
    ("fusion", "concat", r"fusion variant 'concat'.*direct_add"),
])
def test_unknown_options_are_refused(field, value, match):
  model = daea.DAEA(num_blocks=1, **{field: value})
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def test_input_size_must_be_a_multiple_of_4():
  with pytest.raises(ValueError, match=r"multiples of 4, got shape \(1, 10, 8, 1\)"):
    jax.eval_shape(daea.DAEA(num_blocks=1).init, jax.random.key(0), jnp.zeros((1, 10, 8, 1)))
