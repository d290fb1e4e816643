"""CGRANet: parameter count and shapes of the full model (shapes only), the Res2Net v1b
converter (npz; PyTorch reference model and .pth when torch is installed), axial attention
against masked full 2-D attention, reverse attention, the unite loss by hand, a training step
of a reduced model."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cgranet as cgranet_config
from irst_jax import convert, losses, models, optim, train
from irst_jax.models import cgranet, context_attention, layers, res2net

# A reduced Res2Net v1b (same code paths: 'stage' and 'normal' blocks, scale-4 splits).
SMALL = dict(num_blocks=(1, 2, 1, 1), base_width=26, scale=4, stem_width=8, base_planes=8)


def _small_config(**overrides):
  config = cgranet_config.get_config("nudt_sirst")
  config.model.update(dict(SMALL, channels=8, **overrides))
  return config


def _res2net_state(num_blocks, base_width, scale, stem_width, base_planes, in_channels, seed=0):
  """A random state_dict with the key names and shapes of PyTorch's Res2Net_v1b (fc included),
  enumerated from the architecture independently of convert.res2net_v1b_rules."""
  rng = np.random.default_rng(seed)
  state = {}

  def conv(name, cin, cout, k):
    state[f"{name}.weight"] = rng.normal(0, math.sqrt(2 / (cin * k * k)), (cout, cin, k, k))

  def bn(name, c):
    state.update({f"{name}.weight": rng.uniform(0.5, 1.5, c), f"{name}.bias": rng.normal(0, .1, c),
                  f"{name}.running_mean": rng.normal(0, .1, c),
                  f"{name}.running_var": rng.uniform(0.5, 1.5, c),
                  f"{name}.num_batches_tracked": np.array(7)})

  conv("conv1.0", in_channels, stem_width, 3), bn("conv1.1", stem_width)
  conv("conv1.3", stem_width, stem_width, 3), bn("conv1.4", stem_width)
  conv("conv1.6", stem_width, 2 * stem_width, 3), bn("bn1", 2 * stem_width)
  inplanes = 2 * stem_width
  for stage, blocks in enumerate(num_blocks, start=1):
    planes = base_planes * 2 ** (stage - 1)
    width = planes * base_width // 64
    for b in range(blocks):
      t = f"layer{stage}.{b}"
      conv(f"{t}.conv1", inplanes, width * scale, 1), bn(f"{t}.bn1", width * scale)
      for i in range(scale - 1):
        conv(f"{t}.convs.{i}", width, width, 3), bn(f"{t}.bns.{i}", width)
      conv(f"{t}.conv3", width * scale, planes * 4, 1), bn(f"{t}.bn3", planes * 4)
      if b == 0:
        conv(f"{t}.downsample.1", inplanes, planes * 4, 1), bn(f"{t}.downsample.2", planes * 4)
      inplanes = planes * 4
  state["fc.weight"] = rng.normal(0, 0.01, (1000, inplanes))
  state["fc.bias"] = np.zeros(1000)
  return {k: np.asarray(v, np.float32 if v.ndim else np.int64) for k, v in state.items()}


def _random_variables(model, x, seed=0):
  """Variables of `model` as its initialisers draw them (He-normal kernels, unit BN scales,
  zero biases, PReLU slopes 0.25, attention gamma 0.5 so that every parameter gets a
  gradient), without compiling `model.init` (~35 s on CPU)."""
  rng = np.random.default_rng(seed)
  fill = {"scale": 1.0, "bias": 0.0, "slope": 0.25, "gamma": 0.5, "mean": 0.0, "var": 1.0}

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0, math.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    return np.full(leaf.shape, fill[name], np.float32)

  return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(model.init, jax.random.key(0), x))


def _trainable(state):
  return sum(v.size for k, v in state.items()
             if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def test_full_model_parameter_count_and_output_shapes():
  model = models.create_model(cgranet_config.get_config().model)
  x = jax.ShapeDtypeStruct((2, 128, 128, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  total = layers.count_params(variables["params"])
  backbone = layers.count_params(variables["params"]["backbone"])
  full_res2net = _trainable(_res2net_state((3, 4, 6, 3), 26, 4, 32, 64, in_channels=1))
  fc = 1000 * 2048 + 1000
  assert backbone == full_res2net - fc == 23_668_776
  assert abs(full_res2net + 2 * 9 * 32 - 25.72e6) < 0.005e6   # Res2Net-50 v1b (RGB): 25.72 M
  assert total == 24_082_808
  assert abs(total + fc - 26.12e6) / 26.12e6 < 1e-3           # the paper's 26.12 M with fc
  outputs = jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]),
                           variables, x)[0]
  assert [o.shape for o in outputs] == [(2, 128, 128, 1)] * 4


def test_converter_npz_grey_stem_and_errors(tmp_path):
  state = _res2net_state(**SMALL, in_channels=3)
  path = tmp_path / "res2net.npz"
  np.savez(path, **{f"module.{k}": v for k, v in state.items()})    # DataParallel names
  x = jnp.zeros((1, 32, 32, 1))
  shapes = jax.eval_shape(cgranet.CGRANet(channels=8, **SMALL).init, jax.random.key(0), x)
  variables = convert.load_res2net_v1b_weights(shapes, str(path), ("backbone",),
                                               SMALL["num_blocks"], SMALL["scale"])
  backbone, stats = variables["params"]["backbone"], variables["batch_stats"]["backbone"]
  np.testing.assert_array_equal(backbone["layer2_1"]["convs_2"]["kernel"],
                                state["layer2.1.convs.2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(backbone["layer3_0"]["downsample_conv"]["kernel"][0, 0],
                                state["layer3.0.downsample.1.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(stats["layer1_0"]["bns_1"]["var"],
                                state["layer1.0.bns.1.running_var"])
  np.testing.assert_allclose(backbone["stem_conv1"]["kernel"][..., 0, :],
                             state["conv1.0.weight"].sum(1).transpose(1, 2, 0), rtol=1e-6)
  assert variables["params"]["mab"] is shapes["params"]["mab"]     # the decoder is untouched
  # the hook of create_train_state loads `model.backbone_weights`: a missing tensor is named
  missing = {k: v for k, v in state.items() if k != "layer4.0.bns.0.running_mean"}
  np.savez(path, **missing)
  with pytest.raises(convert.ConversionError, match=r"layer4\.0\.bns\.0\.running_mean"):
    convert.load_pretrained(shapes, _small_config(backbone_weights=str(path)).model)
  bad = tmp_path / "weights.bin"
  bad.write_bytes(b"x")
  with pytest.raises(ValueError, match=r"weights\.bin.*\.npz"):
    convert.load_state_dict(bad)
  with pytest.raises(FileNotFoundError, match="absent.pth"):
    convert.load_state_dict(tmp_path / "absent.pth")


def test_pretrained_backbone_loads_after_init_outside_the_compiled_init(tmp_path, monkeypatch):
  """The model reads no file: its init traces without the weight file and holds no weights as
  constants; create_train_state loads them after the compiled init, through its one hook
  (traced with jax.eval_shape: nothing compiles)."""
  state = _res2net_state(**SMALL, in_channels=1, seed=3)
  path = tmp_path / "res2net.npz"
  np.savez(path, **state)
  config = _small_config(backbone_weights=str(path))
  model = models.create_model(config.model)
  assert not hasattr(model, "backbone_weights")
  init = jax.make_jaxpr(lambda r: model.init(r, jnp.zeros((1, 32, 32, 1))))(jax.random.key(0))
  assert max((np.size(c) for c in init.consts), default=0) < 64   # no weights baked in
  tx, _ = optim.create_optimizer(config.optim, 1, 1)
  hook, loaded = convert.load_pretrained, []
  monkeypatch.setattr(convert, "load_pretrained", lambda *a: loaded.append(hook(*a)) or loaded[-1])
  shapes = jax.eval_shape(lambda: train.create_train_state(model, config, tx, (1, 32, 32, 1)))
  (variables,) = loaded
  np.testing.assert_array_equal(variables["params"]["backbone"]["layer3_0"]["conv1"]["kernel"],
                                state["layer3.0.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["bn1"]["mean"],
                                state["bn1.running_mean"])
  assert (jax.tree.structure(shapes.params) == jax.tree.structure(variables["params"])
          and shapes.params["backbone"]["bn1"]["scale"].shape == (16,))
  # a file that does not exist: the model's init does not notice, create_train_state names it
  config.model.backbone_weights = str(tmp_path / "absent.npz")
  jax.make_jaxpr(lambda r: model.init(r, jnp.zeros((1, 32, 32, 1))))(jax.random.key(0))
  with pytest.raises(FileNotFoundError, match=r"absent\.npz"):
    jax.eval_shape(lambda: train.create_train_state(model, config, tx, (1, 32, 32, 1)))


def test_res2net_matches_a_pytorch_res2net_v1b_through_pth(tmp_path):
  torch = pytest.importorskip("torch")
  nn = torch.nn

  class Bottle2neck(nn.Module):   # Res2Net v1b bottleneck, written from the paper's Fig. 2
    def __init__(self, inplanes, planes, stride, stage, base_width, scale):
      super().__init__()
      width = planes * base_width // 64
      self.width, self.stage, self.scale = width, stage, scale
      self.conv1 = nn.Conv2d(inplanes, width * scale, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width * scale)
      self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, stride, 1, bias=False)
                                 for _ in range(scale - 1))
      self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale - 1))
      self.conv3 = nn.Conv2d(width * scale, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      if stage:
        self.pool = nn.AvgPool2d(3, stride, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(inplanes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
      parts = torch.split(torch.relu(self.bn1(self.conv1(x))), self.width, 1)
      outs, y = [], None
      for i in range(self.scale - 1):
        y = parts[i] if self.stage or i == 0 else y + parts[i]
        y = torch.relu(self.bns[i](self.convs[i](y)))
        outs.append(y)
      outs.append(self.pool(parts[-1]) if self.stage else parts[-1])
      residual = self.downsample(x) if self.stage else x
      return torch.relu(self.bn3(self.conv3(torch.cat(outs, 1))) + residual)

  class Res2NetV1b(nn.Module):
    def __init__(self, num_blocks, base_width, scale, stem_width, base_planes):
      super().__init__()
      s = stem_width
      self.conv1 = nn.Sequential(nn.Conv2d(3, s, 3, 2, 1, bias=False), nn.BatchNorm2d(s),
                                 nn.ReLU(), nn.Conv2d(s, s, 3, 1, 1, bias=False),
                                 nn.BatchNorm2d(s), nn.ReLU(), nn.Conv2d(s, 2 * s, 3, 1, 1, bias=False))
      self.bn1 = nn.BatchNorm2d(2 * s)
      inplanes = 2 * s
      for stage, blocks in enumerate(num_blocks, start=1):
        planes = base_planes * 2 ** (stage - 1)
        stride = 1 if stage == 1 else 2
        setattr(self, f"layer{stage}", nn.Sequential(*(
            Bottle2neck(inplanes if b == 0 else planes * 4, planes, stride if b == 0 else 1,
                        b == 0, base_width, scale) for b in range(blocks))))
        inplanes = planes * 4
      self.fc = nn.Linear(inplanes, 1000)

    def forward(self, x):
      x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
      outs = []
      for stage in range(1, 5):
        x = getattr(self, f"layer{stage}")(x)
        outs.append(x)
      return outs

  torch.manual_seed(0)
  net = Res2NetV1b(**SMALL)
  state = _res2net_state(**SMALL, in_channels=3, seed=1)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  net.eval()
  path = tmp_path / "res2net50_v1b_small.pth"
  torch.save({"state_dict": net.state_dict()}, path)
  grey = np.random.default_rng(2).normal(size=(2, 1, 64, 64)).astype(np.float32)
  with torch.no_grad():
    expected = [o.numpy().transpose(0, 2, 3, 1) for o in net(torch.from_numpy(grey).repeat(1, 3, 1, 1))]

  backbone = res2net.Res2NetV1b(**SMALL, norm=layers.batch_norm(False))
  x = jnp.asarray(grey.transpose(0, 2, 3, 1))
  variables = convert.load_res2net_v1b_weights(
      jax.eval_shape(backbone.init, jax.random.key(0), x), str(path), (),
      SMALL["num_blocks"], SMALL["scale"])
  outputs = jax.jit(backbone.apply)(variables, x)
  for got, want in zip(outputs, expected):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("axis", ["height", "width"])
def test_axial_attention_equals_full_attention_restricted_to_columns_or_rows(axis):
  n, h, w, c = 2, 5, 4, 16
  x = np.random.default_rng(0).normal(size=(n, h, w, c)).astype(np.float32)
  module = context_attention.AxialAttention(axis, reduction=8, gamma_init=0.7)
  params = module.init(jax.random.key(1), x)["params"]
  got = np.asarray(module.apply({"params": params}, x))

  # full 2-D self-attention over all h * w positions, masked to the same column (height) or
  # row (width), computed directly with numpy
  proj = lambda name: (x.reshape(n, h * w, c) @ np.asarray(params[name]["kernel"])[0, 0]
                       + np.asarray(params[name]["bias"]))
  q, k, v = proj("query"), proj("key"), proj("value")
  rows, cols = np.divmod(np.arange(h * w), w)
  same = (cols[:, None] == cols[None, :]) if axis == "height" else (rows[:, None] == rows[None, :])
  logits = np.einsum("npd,nqd->npq", q, k) / math.sqrt(q.shape[-1])
  logits = np.where(same, logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  want = x + 0.7 * np.einsum("npq,nqc->npc", weights, v).reshape(n, h, w, c)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_reverse_attention_erases_confident_regions_and_refines_the_rest():
  rng = np.random.default_rng(0)
  feature = rng.normal(size=(1, 4, 4, 8)).astype(np.float32)
  coarse = np.full((1, 4, 4, 1), -3.0, np.float32)
  coarse[0, 1, 2] = 60.0           # a confident target: 1 - sigmoid(60) = 0
  module = context_attention.ReverseAttention(norm=layers.batch_norm(False))
  variables = module.init(jax.random.key(0), feature, coarse)
  variables["params"]["refine_out"]["bias"] = jnp.full((1,), 0.25)
  out = module.apply(variables, feature, coarse)
  # where every input of the refinement's receptive field (5 x 5) is erased, eval-mode BN
  # (mean 0, var 1, bias 0) and ReLU give 0 and the output is coarse + the last conv's bias
  all_erased = np.full((1, 4, 4, 8), 0.0, np.float32)
  erased = module.apply(variables, all_erased, np.full((1, 4, 4, 1), 60.0, np.float32))
  np.testing.assert_allclose(erased, 60.25, atol=1e-6)
  assert out.shape == (1, 4, 4, 1)
  assert not np.allclose(out - coarse, 0.25)    # elsewhere the attended feature contributes


def test_unite_loss_by_hand():
  logits = jnp.array([0.0, math.log(3.0)]).reshape(1, 1, 2, 1)    # p = 0.5, 0.75
  mask = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
  iou = 1 - (0.75 + 1) / (0.5 + 0.75 + 1 - 0.75 + 1)                # smooth 1: 0.3
  bce = (math.log(2.0) - math.log(0.75)) / 2
  assert float(losses.unite_loss(logits, mask)) == pytest.approx(2 * iou + 7 * bce, rel=1e-6)
  ones = jnp.ones_like(mask)    # second map: p = 0.5 everywhere vs mask
  second = 2 * (1 - (0.5 + 1) / (1 + 1 - 0.5 + 1)) + 7 * math.log(2.0)
  got = losses.get_loss("unite")((logits, jnp.zeros_like(ones)), mask)
  assert float(got) == pytest.approx((2 * iou + 7 * bce + second) / 2, rel=1e-6)


def test_cgm_rejects_odd_width_and_model_rejects_bad_sizes():
  with pytest.raises(ValueError, match="even"):
    context_attention.ContextGuidedBlock(7).init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
  with pytest.raises(ValueError, match="multiples of 32"):
    cgranet.CGRANet(**SMALL).init(jax.random.key(0), jnp.zeros((1, 48, 64, 1)))


def test_training_steps_reduce_the_unite_loss_with_finite_gradients_everywhere():
  config = _small_config(mab_input="features", cgm_reduction=2,
                         refine_layers=1, num_blocks=(1, 1, 1, 1))
  model = models.create_model(config.model)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 64, 64, 1)).astype(np.float32)
  mask = np.zeros((2, 64, 64, 1), np.float32)
  mask[0, 10:13, 20:23], mask[1, 40:42, 5:8] = 1, 1
  x[mask > 0] += 3.0
  variables = _random_variables(model, x)
  config.optim.learning_rate = 1e-3
  tx, _ = optim.create_optimizer(config.optim, steps_per_epoch=10, num_epochs=10)
  loss_fn = losses.get_loss(config.train.loss)

  @jax.jit
  def step(params, batch_stats, opt_state):
    def compute(p):
      outputs, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                     mutable=["batch_stats"])
      return loss_fn(outputs, mask), (outputs, updates["batch_stats"])
    (loss, (outputs, stats)), grads = jax.value_and_grad(compute, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss, grads, outputs

  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  history = []
  for i in range(6):
    params, stats, opt_state, loss, grads, outputs = step(params, stats, opt_state)
    history.append(float(loss))
    if i == 0:
      assert len(outputs) == 4 and all(o.shape == (2, 64, 64, 1) for o in outputs)
      leaves = jax.tree_util.tree_leaves_with_path(grads)
      assert all(bool(jnp.all(jnp.isfinite(g))) for _, g in leaves)
      silent = [jax.tree_util.keystr(p) for p, g in leaves if not bool(jnp.any(g != 0))]
      assert not silent, f"parameters without gradient: {silent}"
  assert all(math.isfinite(v) for v in history)
  assert history[-1] < history[0]
