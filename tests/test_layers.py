"""layers: BatchNorm against flax.linen.BatchNorm (output, gradients, running statistics), the max
pools, bilinear resampling and the transposed convolution against references; each in its plain
form and in its CPU form (irst_jax.cpu), which must agree."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irst_jax.cpu import batch_norm as cpu_batch_norm
from irst_jax.cpu import pooling as cpu_pooling
from irst_jax.models import attention, layers


def _flax_batch_norm(train: bool, axis_name=None):
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, axis_name=axis_name if train else None)


def _ours(train: bool, axis_name=None):
  """layers.batch_norm with flax's biased running variance, for like-for-like comparisons."""
  return functools.partial(layers.batch_norm(train, axis_name), unbiased_running_var=False)


@pytest.fixture(params=["cpu form", "plain form"])
def form(request, monkeypatch):
  """Runs a test with layers' CPU forms (what `cpu.form` picks on CPU) or their plain forms."""
  if request.param == "plain form":
    for name in ("_normalize_with_batch_statistics", "_linear", "max_pool_3x3_s2",
                 "max_pool_2x2", "conv_transpose_4x4_s2"):
      monkeypatch.setattr(layers, name, getattr(layers, name).plain)
  return request.param


def _inputs(shape=(4, 6, 5, 3), seed=0):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=shape) * 2.0 + 3.0).astype(np.float32)
  g = rng.normal(size=shape).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(g)


def _loss_and_grads(norm, variables, x, g, axis_name=None):
  """Loss sum(g * BN(x)), its gradients w.r.t. params and x, and the new batch_stats."""
  def loss(params, x):
    y, updates = norm().apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              mutable=["batch_stats"])
    return jnp.sum(g * y), updates
  (value, updates), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      variables["params"], x)
  return value, grads, updates["batch_stats"]


def test_same_variables_as_flax():
  x, _ = _inputs()
  ours = _ours(True)().init(jax.random.key(0), x)
  theirs = _flax_batch_norm(True)().init(jax.random.key(0), x)
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
  jax.tree_util.tree_map(np.testing.assert_array_equal, ours, theirs)


@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (2, 8, 8, 3)])  # 120 pixels, 128 = 4 x 32
@pytest.mark.parametrize("train", [True, False])
def test_forward_gradients_and_running_statistics_match_flax(train, shape, form):
  x, g = _inputs(shape)
  variables = _flax_batch_norm(train)().init(jax.random.key(0), x)
  rng = np.random.default_rng(1)
  variables = jax.tree_util.tree_map(
      lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32), variables)
  ours = _loss_and_grads(_ours(train), variables, x, g)
  theirs = _loss_and_grads(_flax_batch_norm(train), variables, x, g)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  y = _ours(train)().apply(variables, x, mutable=["batch_stats"])[0]
  y_ref = _flax_batch_norm(train)().apply(variables, x, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_constant_channel_has_clipped_variance_and_finite_gradient(form):
  x, g = _inputs()
  x = x.at[..., 1].set(2.0)
  variables = _ours(True)().init(jax.random.key(0), x)
  ours = _loss_and_grads(_ours(True), variables, x, g)
  theirs = _loss_and_grads(_flax_batch_norm(True), variables, x, g)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_synchronised_statistics_under_pmap_axis(form):
  """Two shards on a named axis (vmap stands in for pmap): equals flax's pmean'd BatchNorm."""
  x, g = _inputs((2, 3, 6, 5, 3))
  variables = _flax_batch_norm(True)().init(jax.random.key(0), x[0])

  def per_shard(norm, x, g):
    return _loss_and_grads(functools.partial(norm, axis_name="batch"), variables, x, g)

  ours = jax.vmap(functools.partial(per_shard, _ours(True)), axis_name="batch")(x, g)
  theirs = jax.vmap(functools.partial(per_shard, _flax_batch_norm(True)), axis_name="batch")(x, g)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Synchronised statistics: one shard's BN sees the mean of the whole batch.
  whole = _loss_and_grads(_ours(True), variables, x.reshape(6, 6, 5, 3),
                          g.reshape(6, 6, 5, 3))
  np.testing.assert_allclose(ours[2]["mean"][0], whole[2]["mean"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours[2]["var"][0], whole[2]["var"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours[1][1].reshape(6, 6, 5, 3), whole[1][1], rtol=1e-4, atol=1e-5)


def test_running_variance_is_unbiased_as_in_torch():
  # torch.nn.BatchNorm2d: running_var = 0.9 * running_var + 0.1 * var * n / (n - 1), n = N*H*W.
  x, g = _inputs()
  variables = layers.batch_norm(True)().init(jax.random.key(0), x)
  _, updates = layers.batch_norm(True)().apply(variables, x, mutable=["batch_stats"])
  n = 4 * 6 * 5
  biased = np.var(np.asarray(x).reshape(-1, 3), axis=0)
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * biased * n / (n - 1),
                             rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"],
                             0.1 * np.asarray(x).reshape(-1, 3).mean(0), rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 4, 8, 5), (3, 5, 7, 2)])  # 64 = 2 x 32 pixels, and 105
def test_channel_sums_equal_sums_over_pixels(shape):
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(2,) + shape).astype(np.float32)
  got = cpu_batch_norm.channel_sums(jnp.asarray(a), jnp.asarray(b))
  want = np.stack([a.reshape(-1, shape[-1]).sum(0), b.reshape(-1, shape[-1]).sum(0)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _max_pool_reference(x, g):
  """PyTorch MaxPool2d(3, 2, padding=1) and its gradient, written as loops (float64): each
  window's gradient goes to its first maximum in raster order."""
  n, h, w, c = x.shape
  ho, wo = -(-h // 2), -(-w // 2)
  y = np.zeros((n, ho, wo, c))
  dx = np.zeros(x.shape)
  for b in range(n):
    for k in range(c):
      for i in range(ho):
        for j in range(wo):
          rows = range(max(2 * i - 1, 0), min(2 * i + 2, h))
          cols = range(max(2 * j - 1, 0), min(2 * j + 2, w))
          best = max((x[b, r, q, k], -r, -q) for r in rows for q in cols)
          y[b, i, j, k] = best[0]
          dx[b, -best[1], -best[2], k] += g[b, i, j, k]
  return y, dx


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])
@pytest.mark.parametrize("pool", [layers.max_pool_3x3_s2.plain, cpu_pooling.max_pool_3x3_s2],
                         ids=["plain", "cpu"])
def test_max_pool_3x3_s2_and_gradient_equal_first_maximum_reference(shape, pool):
  rng = np.random.default_rng(4)
  x = rng.integers(0, 3, size=shape).astype(np.float32)  # many ties
  ho, wo = -(-shape[1] // 2), -(-shape[2] // 2)
  g = rng.normal(size=(shape[0], ho, wo, shape[3])).astype(np.float32)
  y, vjp = jax.vjp(jax.jit(pool), jnp.asarray(x))
  y_ref, dx_ref = _max_pool_reference(x, g)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0], dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])
def test_max_pool_2x2_and_gradient_equal_reference(shape):
  """PyTorch MaxPool2d(2, 2) (floor mode) on distinct values: the plain and the CPU form."""
  rng = np.random.default_rng(5)
  x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32)   # no ties
  n, h, w, c = shape
  windows = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
  y_ref = windows.max(axis=(2, 4))
  g = rng.normal(size=y_ref.shape).astype(np.float32)
  dx_ref = np.zeros_like(x)
  dx_ref[:, :h // 2 * 2, :w // 2 * 2] = (
      (windows == y_ref[:, :, None, :, None]) * g[:, :, None, :, None]).reshape(
          n, h // 2 * 2, w // 2 * 2, c)
  for pool in (layers.max_pool_2x2.plain, cpu_pooling.max_pool_2x2, layers.max_pool_2x2):
    y, vjp = jax.vjp(jax.jit(pool), jnp.asarray(x))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], dx_ref)


def _interpolation_matrix(n_in, n_out, align_corners):
  """Dense [n_out, n_in] bilinear weights written from PyTorch's formulas (the reference)."""
  i = np.arange(n_out, dtype=np.float64)
  if align_corners:
    src = i * ((n_in - 1) / max(n_out - 1, 1))
  else:
    src = np.maximum((i + 0.5) * n_in / n_out - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(int), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), lo), 1.0 - (src - lo))
  np.add.at(m, (np.arange(n_out), hi), src - lo)
  return m


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("size_in, size_out", [((8, 8), (16, 16)), ((5, 7), (16, 3)),
                                               ((16, 16), (1, 4)), ((3, 3), (48, 48)),
                                               ((32, 16), (8, 16))])
def test_resize_bilinear_and_its_gradient_equal_interpolation_matrices(size_in, size_out,
                                                                        align_corners, form):
  rng = np.random.default_rng(sum(size_in + size_out))
  x = rng.normal(size=(2,) + size_in + (3,)).astype(np.float32)
  rows = _interpolation_matrix(size_in[0], size_out[0], align_corners)
  cols = _interpolation_matrix(size_in[1], size_out[1], align_corners)
  y, vjp = jax.vjp(lambda t: layers.resize_bilinear(t, size_out, align_corners), jnp.asarray(x))
  np.testing.assert_allclose(y, np.einsum("oh,nhwc,pw->nopc", rows, x, cols), atol=1e-6)
  g = rng.normal(size=y.shape).astype(np.float32)
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0], np.einsum("oh,nopc,pw->nhwc", rows, g, cols),
                             atol=1e-5)
  if not align_corners and size_out[0] >= size_in[0] and size_out[1] >= size_in[1]:
    np.testing.assert_allclose(
        y, jax.image.resize(x, y.shape, "bilinear", antialias=False), atol=1e-6)


@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_bilinear_with_symbolic_sizes_equals_interpolation_matrices(align_corners):
  """jax.export with symbolic H, W (the exported detector): the traced taps give the reference
  weights for upsampling x2, x4, a fixed size and the identity, at several concrete sizes."""

  def resize(x):
    _, h, w, _ = x.shape
    return (layers.resize_bilinear(x, (2 * h, 4 * w), align_corners),
            layers.resize_bilinear(x, (16, 3), align_corners),
            layers.resize_bilinear(x, (h, w), align_corners))

  specs = jax.export.symbolic_args_specs((np.zeros((2, 8, 8, 3), np.float32),), "n, h, w, c")
  exported = jax.export.export(jax.jit(resize))(*specs)
  for h, w in [(5, 7), (32, 20), (1, 9)]:
    x = np.random.default_rng(h * w).normal(size=(2, h, w, 3)).astype(np.float32)
    for y, (out_h, out_w) in zip(exported.call(x), [(2 * h, 4 * w), (16, 3), (h, w)]):
      rows = _interpolation_matrix(h, out_h, align_corners)
      cols = _interpolation_matrix(w, out_w, align_corners)
      np.testing.assert_allclose(y, np.einsum("oh,nhwc,pw->nopc", rows, x, cols), atol=1e-5)


def _conv_transpose_reference(x, kernel):
  """PyTorch ConvTranspose2d(k=4, s=2, p=1) written as loops (float64): input pixel (i, j)
  adds x[i, j] @ kernel[ky, kx] to output pixel (2i + ky - 1, 2j + kx - 1)."""
  n, h, w, _ = x.shape
  out = np.zeros((n, 2 * h + 2, 2 * w + 2, kernel.shape[3]))
  for ky in range(4):
    for kx in range(4):
      out[:, ky:ky + 2 * h:2, kx:kx + 2 * w:2] += np.einsum(
          "nhwi,io->nhwo", x.astype(np.float64), kernel[ky, kx].astype(np.float64))
  return out[:, 1:-1, 1:-1]


def test_conv_transpose_4x4_s2_equals_reference_and_forms_agree():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
  kernel = rng.normal(size=(4, 4, 3, 2)).astype(np.float32)
  variables = {"params": {"kernel": kernel, "bias": np.array([0.5, -1.0], np.float32)}}
  y = layers.ConvTranspose4x4(2).apply(variables, x)
  np.testing.assert_allclose(y, _conv_transpose_reference(x, kernel) + [0.5, -1.0],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layers.conv_transpose_4x4_s2.plain(x, kernel),
                             _conv_transpose_reference(x, kernel), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  got = jax.grad(loss(layers.conv_transpose_4x4_s2), argnums=(0, 1))(x, kernel)
  want = jax.grad(loss(layers.conv_transpose_4x4_s2.plain), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_cbam_spatial_attention_needs_an_odd_kernel():
  x = jnp.ones((1, 8, 8, 4))
  variables = attention.CBAMSpatialAttention(7).init(jax.random.PRNGKey(0), x)
  assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 2, 1)
  with pytest.raises(ValueError, match="odd"):
    attention.CBAMSpatialAttention(4).init(jax.random.PRNGKey(0), x)
