"""ACM-U-Net / ACM-FPN / AsymBiChaFuse: golden vectors of the PyTorch reference and shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irst_jax import convert
from irst_jax.models import acm, attention, layers
from tests import golden


def test_asym_bi_cha_fuse_matches_reference():
  state, (xh, xl), (expected,), meta = golden.load("asym_bi_cha_fuse.npz")
  module = attention.CrossLayerFusion(32, "asym_bi", norm=layers.batch_norm(train=False))
  reference = module.init(jax.random.key(0), xh, xl)
  variables = convert.convert_state_dict(state, convert.asym_bi_cha_fuse_rules(), reference)
  out = module.apply(variables, xh, xl)
  assert meta["tolerance"] == "atol 1e-5"
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_acm_unet_matches_reference_and_parameter_count():
  state, (x,), (expected,), meta = golden.load("acm_unet.npz")
  model = acm.ACMUNet(channels=(8, 16, 32, 64), num_blocks=3)
  reference = model.init(jax.random.key(0), x)
  assert layers.count_params(reference["params"]) == 397_823
  variables = convert.convert_state_dict(state, convert.acm_unet_rules(3), reference)
  probabilities = jax.nn.sigmoid(model.apply(variables, x))
  assert meta["tolerance"] == "atol 1e-4"
  np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def test_converter_names_missing_and_misshaped_tensors():
  state, (x,), _, _ = golden.load("acm_unet.npz")
  model = acm.ACMUNet()
  reference = model.init(jax.random.key(0), x)
  rules = convert.acm_unet_rules(3)
  missing = {k: v for k, v in state.items() if k != "layer2.0.bn1.running_var"}
  with pytest.raises(convert.ConversionError, match="layer2.0.bn1.running_var"):
    convert.convert_state_dict(missing, rules, reference)
  misshaped = dict(state, **{"head.block.0.weight": np.zeros((4, 16, 5, 5), np.float32)})
  with pytest.raises(convert.ConversionError, match=r"head.block.0.weight.*\(3, 3, 16, 4\)"):
    convert.convert_state_dict(misshaped, rules, reference)
  extra = dict(state, **{"module.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(convert.ConversionError, match="extra.weight"):
    convert.convert_state_dict(extra, rules, reference)
  prefixed = {f"module.{k}": v for k, v in state.items()}
  converted = convert.convert_state_dict(prefixed, rules, reference)
  np.testing.assert_array_equal(converted["params"]["head"]["conv2"]["bias"],
                                state["head.block.4.bias"])


@pytest.mark.parametrize("variant", sorted(attention.FUSION_VARIANTS))
@pytest.mark.parametrize("model_cls", [acm.ACMUNet, acm.ACMFPN])
def test_every_fusion_variant_builds_in_both_hosts(model_cls, variant):
  model = model_cls(channels=(4, 8, 8, 16), num_blocks=1, fusion=variant)
  x = jnp.ones((2, 32, 48, 1))
  variables = model.init(jax.random.key(0), x)
  out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(1)})
  assert out.shape == (2, 32, 48, 1)
  assert set(updates) == {"batch_stats"}


def test_tiny_stem_keeps_full_resolution():
  model = acm.ACMUNet(channels=(8, 16, 32, 64), num_blocks=1, tiny=True)
  variables = model.init(jax.random.key(0), jnp.ones((1, 16, 16, 1)))
  assert variables["params"]["backbone"]["stem"]["conv1"]["kernel"].shape == (3, 3, 1, 16)
  assert model.apply(variables, jnp.ones((1, 16, 16, 1))).shape == (1, 16, 16, 1)


def test_bad_input_shape_is_named():
  model = acm.ACMUNet()
  with pytest.raises(ValueError, match=r"multiples of 16.*\(1, 30, 32, 1\)"):
    model.init(jax.random.key(0), jnp.ones((1, 30, 32, 1)))


def test_unknown_fusion_variant_lists_known_ones():
  with pytest.raises(ValueError, match="asym_bi"):
    acm.ACMUNet(fusion="sum").init(jax.random.key(0), jnp.ones((1, 32, 32, 1)))


def test_align_corners_resize_hand_values():
  # 1-D ramp [0, 3] upsampled to 4 samples with align_corners: sources 0, 1/3, 2/3, 1 -> 0,1,2,3.
  x = jnp.array([0.0, 3.0]).reshape(1, 1, 2, 1)
  out = layers.resize_bilinear(x, (1, 4), align_corners=True)
  np.testing.assert_allclose(out.reshape(-1), [0.0, 1.0, 2.0, 3.0], atol=1e-6)
  # 3x3 -> 2x2 keeps the corners exactly.
  y = jnp.arange(9.0).reshape(1, 3, 3, 1)
  np.testing.assert_allclose(layers.resize_bilinear(y, (2, 2), True).reshape(-1), [0, 2, 6, 8])
  # Half-pixel mode: [0, 3] -> 4 samples at sources -0.25, 0.25, 0.75, 1.25 (edge-clamped).
  np.testing.assert_allclose(layers.resize_bilinear(x, (1, 4)).reshape(-1),
                             [0.0, 0.75, 2.25, 3.0], atol=1e-6)
