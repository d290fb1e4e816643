"""irst_jax.profile: parameters, FLOPs (hand-counted on a toy), memory, latency, the command."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp

from irst_jax import models
from irst_jax.models import cpu_convolution, layers
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
  f = lambda x, k: cpu_convolution.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x = jax.ShapeDtypeStruct((1, 8, 8, 2), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32)
  with profile.plain_convolutions():
    assert jax.default_backend() == "plain"
    assert profile.flops(f, x, k) == 7744
  assert jax.default_backend() != "plain"


def _tiny_acm():
  config = profile.load_config(profile.config_file("acm_unet"), "nuaa_sirst,smoke")
  config.model.channels = (4, 8, 8, 16)
  config.model.num_blocks = 1
  return config


def test_profile_of_a_tiny_model():
  config = _tiny_acm()
  p = profile.profile(config, image_size=32, runs=2, train_batch=2)
  model = models.create_model(config.model)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
  assert p.parameters == layers.count_params(variables["params"])
  assert p.multiply_adds == p.flops / 2
  # at least the multiply-adds of its convolutions inside the image: a 3x3 convolution of
  # C_in -> C_out on 32 x 32 has at least 30 x 30 x 9 x C_in x C_out of them (the first stage)
  assert p.flops > 2 * 30 * 30 * 9 * 1 * 4
  # the weights are arguments of both programs; training holds more (gradients, Adam moments,
  # a batch of 2 with its activations)
  weights = 4 * p.parameters
  assert p.inference_bytes > weights and p.train_bytes > 3 * weights
  assert p.train_bytes > p.inference_bytes
  assert p.latency_s > 0 and p.runs == 2
  text = profile.report(p)
  assert f"parameters: {p.parameters:,}" in text and "thop" in text
  table = profile.table([p, p])
  assert table.splitlines()[2].startswith("| model | parameters | multiply-adds (G)")
  assert table.splitlines()[-1].startswith(f"| acm_unet | {p.parameters:,} |")


def test_profile_command(tmp_path):
  command = [sys.executable, "-m", "irst_jax.profile", "--config=configs/acm_unet.py:nuaa_sirst,smoke",
             "--config.model.channels=(4,8,8,16)", "--config.model.num_blocks=1",
             "--image_size=32", "--runs=1", "--notrain"]
  done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "model: acm_unet, grey input 1x32x32" in done.stdout
  assert "forward + backward + Adam): n/a MiB" in done.stdout   # --notrain
  bad = subprocess.run(command[:3] + ["--image_size=33"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == "error: give either --config=FILE or --all"
