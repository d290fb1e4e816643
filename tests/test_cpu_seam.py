"""irst_jax.cpu.form: each layer's CPU form is compiled where the program runs on CPU and its
plain form everywhere else, under jit, grad and pmap, and one multi-platform `jax.export`
carries both."""
import collections
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irst_jax.models import layers

_SEAMS = ("_normalize_with_batch_statistics", "_linear", "max_pool_3x3_s2", "max_pool_2x2",
          "conv_transpose_4x4_s2")


class _Tiny(nn.Module):
  """Every layer with a CPU form: a single-channel stride-2 stem (space-to-depth), BatchNorm,
  both max pools, the transposed convolution, a narrow convolution (padded to 8 features), a
  strided 1x1 convolution and bilinear resampling."""
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    y = nn.relu(layers.batch_norm(train, self.axis_name)()(layers.conv(8, 3, 2)(x)))
    y = layers.max_pool_2x2(layers.max_pool_3x3_s2(y))
    y = layers.conv(16, 1, 2)(layers.ConvTranspose4x4(8)(y))
    y = layers.conv(3, 3)(y)
    return layers.resize_bilinear(y, x.shape[1:3], align_corners=True)


def _use(monkeypatch, which: str):
  """Makes layers call their plain forms (`which="plain"`) or their CPU forms ("cpu_form")
  directly, without `cpu.form`."""
  for name in _SEAMS:
    monkeypatch.setattr(layers, name, getattr(getattr(layers, name), which))
  monkeypatch.setattr(layers, "Conv", functools.partial(
      layers.Conv, conv_general_dilated=getattr(layers.conv_general_dilated, which)))


def _inputs():
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32)
  variables = _Tiny().init(jax.random.PRNGKey(0), x)
  return variables, jnp.asarray(x)


def _loss_and_grads(model, variables, x):
  def loss(params):
    y, updates = model.apply({**variables, "params": params}, x, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y)), updates
  return jax.value_and_grad(loss, has_aux=True)(variables["params"])


def _assert_close(a, b, tol=1e-4):
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def _op_counts(text: str) -> collections.Counter:
  """StableHLO ops by name, without those a one-branch platform switch adds: the switch
  itself and, under grad, zeros for the residuals only the other branch has (dead code)."""
  ops = re.findall(r"\bstablehlo\.([a-z_]+)", text)
  return collections.Counter(
      op for op in ops if op not in ("case", "return", "constant", "broadcast_in_dim"))


def test_multi_platform_export_serialises_and_runs_the_cpu_form(monkeypatch):
  variables, x = _inputs()
  step = jax.jit(functools.partial(_loss_and_grads, _Tiny()))
  exported = jax.export.export(step, platforms=("cpu", "cuda"))(variables, x)
  assert exported.platforms == ("cpu", "cuda")
  restored = jax.export.deserialize(exported.serialize())
  got = restored.call(variables, x)
  _assert_close(got, step(variables, x), tol=1e-6)
  _use(monkeypatch, "plain")
  _assert_close(got, jax.jit(functools.partial(_loss_and_grads, _Tiny()))(variables, x))


def test_cuda_lowering_is_the_plain_model(monkeypatch):
  variables, x = _inputs()
  def cuda_text():
    step = jax.jit(functools.partial(_loss_and_grads, _Tiny()))
    return jax.export.export(step, platforms=("cuda",))(variables, x).mlir_module()
  ours = cuda_text()
  cpu = jax.jit(functools.partial(_loss_and_grads, _Tiny())).lower(variables, x).as_text()
  _use(monkeypatch, "plain")
  plain = cuda_text()
  assert _op_counts(ours) == _op_counts(plain)
  # A mark of the CPU forms: BatchNorm's channel sums behind an optimisation barrier.
  assert "optimization_barrier" in cpu and "optimization_barrier" not in ours


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compilation")
def test_cpu_compilation_holds_the_cpu_form_only(monkeypatch):
  variables, x = _inputs()
  def compiled():
    step = jax.jit(functools.partial(_loss_and_grads, _Tiny()))
    return step.lower(variables, x).compile().as_text()
  ours = compiled()
  _use(monkeypatch, "cpu_form")
  cpu_form = compiled()
  assert "conditional" not in ours
  opcodes = lambda text: collections.Counter(re.findall(r" = \S+ ([a-z-]+)\(", text))
  assert opcodes(ours) == opcodes(cpu_form)


def test_cpu_form_under_pmap_and_grad_equals_the_plain_form(monkeypatch):
  variables, x = _inputs()
  def step():
    grads = jax.pmap(functools.partial(_loss_and_grads, _Tiny(axis_name="batch")),
                     axis_name="batch", in_axes=(None, 0))
    return grads(variables, x[None])
  ours = step()
  _use(monkeypatch, "plain")
  _assert_close(ours, step())


def test_convolution_equations_of_one_platform():
  """The jaxpr holds both forms; `platform=` picks the convolutions that platform runs: the
  transposed convolution is an input-dilated one on CUDA and a sub-pixel one on CPU."""
  from irst_jax.cpu import convolution
  variables, x = _inputs()
  forward = lambda v, x: _Tiny().apply(v, x, train=False)
  dilations = {
      platform: [tuple(e.params["lhs_dilation"]) for e in convolution.convolution_equations(
          forward, variables, x, platform=platform)]
      for platform in ("cpu", "cuda", None)}
  assert dilations["cuda"].count((2, 2)) == 1 and (2, 2) not in dilations["cpu"]
  assert len(dilations[None]) == len(dilations["cpu"]) + len(dilations["cuda"])
