"""Shuffle attention against SA-Net's reference output (golden vectors) and its errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irst_jax import convert
from irst_jax.models import attention
from tests import golden


def test_shuffle_attention_matches_sa_net():
  state, (x,), (expected,), meta = golden.load("shuffle_attention.npz")
  module = attention.ShuffleAttention(groups=8)
  reference = module.init(jax.random.key(0), x)
  variables = convert.convert_state_dict(
      state, [convert.Rule("", (), convert.SHUFFLE_ATTENTION)], reference)
  assert meta["tolerance"] == "atol 1e-5"
  np.testing.assert_allclose(module.apply(variables, x), expected, atol=1e-5)


def test_initial_gates_and_channel_shuffle_order():
  # With the initial parameters both gates are sigmoid(1) for every pixel, so the output is
  # sigmoid(1) * x with channels reordered by the 2-group shuffle: out[c'] with c' = 2m + a
  # comes from in[a * C/2 + m].
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 2, 8)), jnp.float32)
  module = attention.ShuffleAttention(groups=2)
  out = module.apply(module.init(jax.random.key(0), x), x)
  order = [0, 4, 1, 5, 2, 6, 3, 7]
  np.testing.assert_allclose(out[..., 0:8:2], jax.nn.sigmoid(1.0) * x[..., 0:4], rtol=1e-6)
  np.testing.assert_allclose(out, jax.nn.sigmoid(1.0) * x[..., order], rtol=1e-6)


def test_groups_must_divide_half_the_channels():
  with pytest.raises(ValueError, match=r"groups=3 must divide C/2 = 8"):
    attention.ShuffleAttention(groups=3).init(jax.random.key(0), jnp.ones((1, 4, 4, 16)))
