"""irst_jax.cpu.convolution: the CPU forms of the convolution give the plain convolution's values
and gradients, layers.Conv keeps flax.linen.Conv's variables, the forms compile to what they
are for, and `cpu.form` puts them in place on CPU only (also in a multi-platform export)."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irst_jax.cpu import convolution as cpu_convolution
from irst_jax.models import layers

_NHWC = ("NHWC", "HWIO", "NHWC")


def _residual_chain(conv, kernels, a, b):
  """Two 3x3 convolutions behind BN-like affine + ReLU + residual chains (as in BasicBlock)."""
  same = lambda x, k: conv(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)
  x = jnp.maximum(a * 1.5 + 0.2 + b, 0.0)
  y = same(x, kernels[0])
  x2 = jnp.maximum(y * 0.7 - 0.1 + x, 0.0)
  return jnp.sum(jnp.sin(same(x2, kernels[1])))


def _chain_inputs(shape=(2, 16, 16, 8)):
  rng = np.random.default_rng(3)
  a, b = (jnp.asarray(rng.normal(size=shape).astype(np.float32)) for _ in range(2))
  kernels = [jnp.asarray(rng.normal(size=(3, 3, shape[-1], shape[-1])).astype(np.float32) * 0.2)
             for _ in range(2)]
  return kernels, a, b


def test_materialising_conv_has_the_values_and_gradients_of_lax_conv():
  kernels, a, b = _chain_inputs()
  grad = lambda conv: jax.jit(jax.value_and_grad(
      functools.partial(_residual_chain, conv), argnums=(0, 1, 2)))
  got_value, got = grad(cpu_convolution.conv_general_dilated)(kernels, a, b)
  want_value, want = grad(jax.lax.conv_general_dilated)(kernels, a, b)
  assert float(got_value) == float(want_value)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_conv_module_keeps_flax_conv_variables_and_names():
  x = jnp.ones((1, 8, 8, 3))
  ours = layers.Conv(4, (3, 3)).init(jax.random.PRNGKey(0), x)
  flax_conv = nn.Conv(4, (3, 3)).init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(flax_conv)
  for o, f in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(flax_conv)):
    np.testing.assert_array_equal(o, f)

  class Two(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.Conv(2, (1, 1))(layers.Conv(3, (1, 1))(x))
  assert set(Two().init(jax.random.PRNGKey(0), x)["params"]) == {"Conv_0", "Conv_1"}


def _weight_gradient_operand_counts(conv, shape=(8, 32, 32, 16)):
  """For each weight-gradient convolution in the compiled gradient of `_residual_chain`
  (its window is the whole image), the operand count of the fusions feeding it."""
  kernels, a, b = _chain_inputs(shape)
  compiled = jax.jit(jax.grad(functools.partial(_residual_chain, conv), argnums=(0, 1, 2))).lower(
      kernels, a, b).compile().as_text()
  entry = compiled[compiled.rindex("ENTRY"):]
  fusions = dict(re.findall(r"%(\S+) = \S+ fusion\(([^)]*)\)", entry))
  counts = []
  for lhs, rhs in re.findall(
      rf"convolution\(%(\S+), %(\S+)\), window={{size={shape[1]}x{shape[2]}", entry):
    counts += [fusions[name].count("%") for name in (lhs, rhs) if name in fusions]
  return counts


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU fusion behaviour")
def test_weight_gradient_transposes_read_one_buffer_on_cpu():
  from irst_jax import xla_cpu_flags
  if xla_cpu_flags._jaxlib_series() not in xla_cpu_flags.JAXLIB_SERIES:
    pytest.skip("fusion decisions checked on the jaxlib series of xla_cpu_flags only")
  plain = _weight_gradient_operand_counts(jax.lax.conv_general_dilated)
  ours = _weight_gradient_operand_counts(cpu_convolution.conv_general_dilated)
  # XLA fuses the affine + ReLU + residual chain (3-4 arrays) into the plain transposes.
  assert plain and max(plain) >= 3
  assert len(ours) == len(plain) and set(ours) == {1}


def _convolutions(fn, *args):
  """(lhs shape, rhs shape) of every convolution in the jaxpr of fn(*args), in order."""
  return [(e.invars[0].aval.shape, e.invars[1].aval.shape)
          for e in cpu_convolution.convolution_equations(fn, *args)]


def _ours(strides, padding):
  """cpu_convolution.conv_general_dilated(x, kernel) with these strides and padding, NHWC."""
  return functools.partial(cpu_convolution.conv_general_dilated, window_strides=strides,
                           padding=padding, dimension_numbers=_NHWC)


def _assert_same_as_lax(x, kernel, strides, padding, rtol=1e-5):
  """Values and gradients (w.r.t. input and kernel) of cpu_convolution against lax."""
  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=_NHWC)))
  ours = cpu_convolution.conv_general_dilated(x, kernel, strides, padding,
                                              dimension_numbers=_NHWC)
  want = jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)
  assert ours.shape == want.shape
  np.testing.assert_allclose(np.asarray(ours), np.asarray(want), rtol=rtol, atol=1e-5)
  got = jax.grad(loss(cpu_convolution.conv_general_dilated), argnums=(0, 1))(x, kernel)
  expected = jax.grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, expected):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)


def _normal(rng, *shape):
  return jnp.asarray(rng.normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("features,strides", [(4, (1, 1)), (3, (2, 2)), (2, (1, 1))])
def test_narrow_output_convolution_is_padded_to_eight_features(features, strides):
  rng = np.random.default_rng(features)
  x, kernel = _normal(rng, 2, 12, 10, 5), _normal(rng, 3, 3, 5, features)
  _assert_same_as_lax(x, kernel, strides, ((1, 1), (1, 1)))
  conv = _ours(strides, ((1, 1), (1, 1)))
  assert _convolutions(conv, x, kernel) == [((2, 12, 10, 5), (3, 3, 5, 8))]


@pytest.mark.parametrize("kernel_shape", [(1, 1, 5, 4), (3, 3, 5, 8), (3, 3, 5, 1)])
def test_other_convolutions_are_left_as_they_are(kernel_shape):
  rng = np.random.default_rng(0)
  x, kernel = _normal(rng, 2, 12, 10, 5), _normal(rng, *kernel_shape)
  conv = _ours((1, 1), "SAME")
  assert _convolutions(conv, x, kernel) == [((2, 12, 10, 5), kernel_shape)]


def test_single_channel_stride2_forward_runs_on_space_to_depth_input():
  rng = np.random.default_rng(1)
  x, kernel = _normal(rng, 2, 16, 12, 1), _normal(rng, 3, 3, 1, 8)
  _assert_same_as_lax(x, kernel, (2, 2), ((1, 1), (1, 1)))
  conv = _ours((2, 2), ((1, 1), (1, 1)))
  assert _convolutions(conv, x, kernel) == [((2, 8, 6, 4), (2, 2, 4, 8))]
  # The weight gradient is the plain convolution's: it reads the input itself. The input
  # gradient is the sub-pixel convolution, its 4 phase features padded to 8.
  weight_gradient = jax.grad(lambda k: jnp.sum(conv(x, k)))
  assert ((2, 16, 12, 1), (2, 8, 6, 8)) in _convolutions(weight_gradient, kernel)
  input_gradient = jax.grad(lambda x: jnp.sum(conv(x, kernel)))
  assert ((2, 8, 6, 8), (2, 2, 8, 8)) in _convolutions(input_gradient, x)
  # Odd sizes, other paddings and multi-channel inputs keep the plain convolution.
  odd = _normal(rng, 2, 15, 12, 1)
  _assert_same_as_lax(odd, kernel, (2, 2), ((1, 1), (1, 1)))
  assert _convolutions(conv, odd, kernel) == [((2, 15, 12, 1), (3, 3, 1, 8))]
  assert _convolutions(functools.partial(conv, padding=((0, 0), (0, 0))), x, kernel) == [
      ((2, 16, 12, 1), (3, 3, 1, 8))]


def test_stride2_input_gradient_is_a_sub_pixel_convolution():
  rng = np.random.default_rng(2)
  x, kernel = _normal(rng, 2, 16, 12, 5), _normal(rng, 3, 3, 5, 8)
  _assert_same_as_lax(x, kernel, (2, 2), ((1, 1), (1, 1)))
  conv = _ours((2, 2), ((1, 1), (1, 1)))
  assert _convolutions(conv, x, kernel) == [((2, 16, 12, 5), (3, 3, 5, 8))]
  # Output gradient [2, 8, 6, 8] (padded to 9 x 7) -> 4 phases x 5 input features, with no
  # dilation of the output gradient (XLA's own input gradient dilates it by 2).
  input_gradient = jax.grad(lambda x: jnp.sum(jnp.sin(conv(x, kernel))))
  equations = cpu_convolution.convolution_equations(input_gradient, x)
  assert ((2, 8, 6, 8), (2, 2, 8, 20)) in [
      (e.invars[0].aval.shape, e.invars[1].aval.shape) for e in equations]
  assert {tuple(e.params["lhs_dilation"]) for e in equations} == {(1, 1)}
  # Odd sizes and more than 16 input features keep the plain convolution and its gradients.
  for plain_x, plain_kernel in ((_normal(rng, 2, 15, 12, 5), kernel),
                                (_normal(rng, 2, 8, 8, 17), _normal(rng, 3, 3, 17, 8))):
    _assert_same_as_lax(plain_x, plain_kernel, (2, 2), ((1, 1), (1, 1)))
    assert {tuple(e.params["lhs_dilation"]) for e in cpu_convolution.convolution_equations(
        jax.grad(lambda x, k: jnp.sum(conv(x, k))), plain_x, plain_kernel)} == {(1, 1), (2, 2)}


@pytest.mark.parametrize("height,width,strides", [(12, 10, (2, 2)), (11, 9, (2, 2)), (9, 8, (3, 2))])
def test_strided_1x1_convolution_runs_on_the_subsampled_input(height, width, strides):
  rng = np.random.default_rng(height)
  x, kernel = _normal(rng, 2, height, width, 5), _normal(rng, 1, 1, 5, 8)
  _assert_same_as_lax(x, kernel, strides, ((0, 0), (0, 0)))
  conv = _ours(strides, ((0, 0), (0, 0)))
  out_size = (-(-height // strides[0]), -(-width // strides[1]))
  assert _convolutions(conv, x, kernel) == [((2, *out_size, 5), (1, 1, 5, 8))]
  gradients = jax.grad(lambda x, k: jnp.sum(conv(x, k)), argnums=(0, 1))
  equations = cpu_convolution.convolution_equations(gradients, x, kernel)
  assert {tuple(e.params["window_strides"]) for e in equations} == {(1, 1)}
  assert {tuple(e.params["lhs_dilation"]) for e in equations} == {(1, 1)}
  assert {tuple(e.params["rhs_dilation"]) for e in equations} == {(1, 1)}


def test_flax_conv_module_gets_both_rewrites_in_turn():
  x = jnp.ones((1, 16, 16, 1))
  model = layers.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert variables["params"]["kernel"].shape == (3, 3, 1, 4)
  cpu_model = model.clone(conv_general_dilated=cpu_convolution.conv_general_dilated)
  assert _convolutions(cpu_model.apply, variables, x) == [((1, 8, 8, 4), (2, 2, 4, 8))]
  want = nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))).apply(variables, x)
  np.testing.assert_allclose(model.apply(variables, x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,kernel_size", [((2, 9, 13, 2), 7), ((1, 6, 5, 3), 3)])
def test_shifted_sums_equal_convolution_and_its_gradient(shape, kernel_size):
  rng = np.random.default_rng(kernel_size)
  x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, shape[-1], 1)).astype(
      np.float32))
  pad = kernel_size // 2

  def reference(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  # float64 numpy reference of the forward: sum over the window of the zero-padded input.
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  expected = np.zeros(shape[:3] + (1,))
  for dy in range(kernel_size):
    for dx in range(kernel_size):
      window = xp[:, dy:dy + shape[1], dx:dx + shape[2], :]
      expected[..., 0] += window @ np.asarray(kernel[dy, dx, :, 0], np.float64)
  out = jax.jit(cpu_convolution.shifted_sums_conv)(x, kernel)
  assert out.shape == shape[:3] + (1,)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)

  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  got = jax.grad(loss(cpu_convolution.shifted_sums_conv), argnums=(0, 1))(x, kernel)
  want = jax.grad(loss(reference), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)
  # cpu_convolution.conv_general_dilated takes this form for at most 2 features to 1, 'same'.
  forms = _convolutions(_ours((1, 1), ((pad, pad), (pad, pad))), x, kernel)
  assert forms == ([] if shape[-1] <= 2 else [(shape, kernel.shape)])
