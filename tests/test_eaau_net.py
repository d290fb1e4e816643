"""EAAU-Net: the EAA module (eq. 9) by hand, every Fig. 8 variant building and training."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import eaau_net
from irst_jax import models
from irst_jax.models import attention, layers


def test_eaa_equals_equation_9():
  rng = np.random.default_rng(0)
  xh, xl = (jnp.asarray(rng.normal(size=(2, 8, 8, 16)), jnp.float32) for _ in range(2))
  module = attention.EnhancedAsymmetricAttention(16, "eaa", 4, layers.batch_norm(False))
  variables = module.init(jax.random.key(0), xh, xl)
  z = module.apply(variables, xh, xl)
  params = variables["params"]
  sa_x = attention.ShuffleAttention(4).apply({"params": params["sa_low"]}, xl)
  sa_y = attention.ShuffleAttention(4).apply({"params": params["sa_high"]}, xh)
  g = attention.ChannelAttention(16, 4, "global", layers.batch_norm(False)).apply(
      {"params": params["modulation"], "batch_stats": variables["batch_stats"]["modulation"]}, xl)
  assert g.shape == (2, 1, 1, 16)
  np.testing.assert_allclose(z, sa_x + g * sa_y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", sorted(attention.EAA_VARIANTS))
def test_every_variant_builds_and_takes_a_training_step(variant):
  config = eaau_net.get_config("nuaa_sirst")
  config.model.fusion = variant
  config.model.num_blocks = 1
  model = models.create_model(config.model)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 1)), jnp.float32)
  variables = model.init(jax.random.key(0), x)

  def loss(params):
    out, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                               train=True, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(1)})
    return jnp.mean(jax.nn.sigmoid(out)), out
  grads, out = jax.grad(loss, has_aux=True)(variables["params"])
  assert out.shape == (2, 16, 16, 1)   # tiny stem: full resolution, no final resize
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  has_sa = "sa_high" in variables["params"]["fuse1"]
  assert has_sa == (variant not in ("only_baa",))


def test_recipe_and_parameter_count():
  config = eaau_net.get_config("nuaa_sirst")
  assert (config.dataset.builder_config, config.dataset.crop_size) == ("acm", 448)
  assert (config.optim.optimizer, config.optim.learning_rate, config.optim.weight_decay,
          config.train.batch_size, config.train.num_epochs) == ("adagrad", 0.05, 1e-4, 8, 300)
  model = models.create_model(config.model)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  # By hand from ACM-U-Net's 397,823:
  # - stem: ACM's 1,866 (input BN 2, convs 72 + 576 + 1,152, BNs 16 + 16 + 32) becomes the
  #   tiny 178 (input BN 2, conv 1->16 144, BN 32);
  # - fusions: AsymBiChaFuse 10,576 (C=32: two attentions of 632, post conv 9,248, BN 64) and
  #   2,728 (C=16: 2 x 188, 2,320, 32) become EAA 680 (C=32: SA 2 x 6 x 4, attention 632)
  #   and 212 (C=16: SA 2 x 6 x 2, attention 188).
  expected = 397_823 - 1_866 + 178 - (10_576 + 2_728) + (680 + 212)
  assert layers.count_params(variables["params"]) == expected == 383_723


def test_unknown_fusion_lists_both_families():
  config = eaau_net.get_config()
  config.model.fusion = "concat"
  with pytest.raises(ValueError, match=r"asym_bi.*eaa"):
    models.create_model(config.model).init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
