"""irst_jax.profile: parameters, FLOPs (hand-counted on a toy), memory, latency, the command."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
from flax import linen as nn

from irst_jax import models
from irst_jax.models import layers
from irst_jax.serving import profile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _conv(padding):
  return lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), padding,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_flops_of_a_3x3_convolution_equal_the_hand_count():
  x = jax.ShapeDtypeStruct((1, 8, 8, 2), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32)
  # VALID: 6 x 6 outputs x 4 features, each 3 x 3 x 2 multiply-adds of 2 FLOPs
  assert profile.flops(_conv("VALID"), x, k) == 6 * 6 * 4 * (3 * 3 * 2) * 2 == 5184
  # SAME: only taps inside the image count; per axis 2 + 6 x 3 + 2 = 22 of the 8 x 3 taps
  assert profile.flops(_conv("SAME"), x, k) == 22 * 22 * 2 * 4 * 2 == 7744


def test_flops_are_those_of_the_plain_convolution():
  # irst_jax's convolutions (CPU forms on CPU) counted as the plain one under the profile
  f = lambda x, k: layers.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x = jax.ShapeDtypeStruct((1, 8, 8, 2), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32)
  with profile.plain_convolutions():
    assert profile.flops(f, x, k) == 7744
    plain = str(jax.make_jaxpr(f)(x, k))
  # outside the block (a new function: traces are cached per function) both forms are traced
  both = str(jax.make_jaxpr(lambda x, k: f(x, k))(x, k))
  assert "platform_index" in both and "platform_index" not in plain


class _Tiny(nn.Module):
  """conv 3x3 (1 -> 4) + BatchNorm + ReLU + dropout + conv 1x1 (4 -> 1): 36 + 8 + 5 params."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(layers.BatchNorm(use_running_average=not train)(
        nn.Conv(4, (3, 3), use_bias=False)(x)))
    x = nn.Dropout(0.1, deterministic=not train)(x)
    return nn.Conv(1, (1, 1))(x)


def test_profile_of_a_tiny_model(monkeypatch):
  config = profile.load_config(profile.config_file("acm_unet"), "nuaa_sirst,smoke")
  monkeypatch.setattr(models, "create_model", lambda _: _Tiny())
  p = profile.profile(config, image_size=32, runs=2, train_batch=2, name="tiny")
  variables = _Tiny().init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
  assert p.parameters == layers.count_params(variables["params"]) == 36 + 8 + 5 == 49
  # multiply-adds of the convolutions: 3x3 SAME on 32 x 32 (taps inside the image, per axis
  # 2 + 30 x 3 + 2 = 94, see above) to 4 features, and 1x1 from 4 features; then BatchNorm,
  # ReLU and the bias add a few FLOPs a pixel
  conv = 94 * 94 * 4 + 32 * 32 * 4
  assert 2 * conv <= p.flops <= 2 * conv + 32 * 32 * 4 * 8
  assert p.multiply_adds == p.flops / 2
  # the weights and a 32 x 32 input are arguments; training holds a batch of 2 with its
  # activations, gradients and Adam moments
  assert p.inference_bytes >= 4 * (49 + 32 * 32) and p.train_bytes > p.inference_bytes
  assert p.latency_s > 0 and p.runs == 2
  text = profile.report(p)
  assert "parameters: 49" in text and "thop" in text
  table = profile.table([p, p])
  assert table.splitlines()[2].startswith("| model | parameters | multiply-adds (G)")
  assert table.splitlines()[-1].startswith("| tiny | 49 |")


def test_profile_command(tmp_path):
  command = [sys.executable, "-m", "irst_jax.profile", "--config=configs/acm_unet.py:nuaa_sirst,smoke",
             "--config.model.channels=(4,8,8,16)", "--config.model.num_blocks=1",
             "--image_size=32", "--runs=1", "--notrain"]
  done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "model: acm_unet, grey input 1x32x32" in done.stdout
  config = profile.load_config(profile.config_file("acm_unet"), "nuaa_sirst,smoke")
  config.model.channels, config.model.num_blocks = (4, 8, 8, 16), 1
  model = models.create_model(config.model)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
  assert f"parameters: {layers.count_params(variables['params']):,}\n" in done.stdout
  assert "forward + backward + Adam): n/a MiB" in done.stdout   # --notrain
  bad = subprocess.run(command[:3] + ["--image_size=33"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == "error: give either --config=FILE or --all"
