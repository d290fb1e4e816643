"""irst_jax.xla_cpu_flags: what is added to XLA_FLAGS, and when nothing is."""
import os
import subprocess
import sys

import pytest

from irst_jax import xla_cpu_flags

_XNN, _YNN, _SCHEDULER = (flag.split("=")[0] for flag in xla_cpu_flags.FLAGS)


@pytest.fixture
def measured_jaxlib(monkeypatch):
  monkeypatch.setattr(xla_cpu_flags, "_jaxlib_series", lambda: xla_cpu_flags.JAXLIB_SERIES[0])


def test_appends_to_the_users_flags(measured_jaxlib):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert xla_cpu_flags.apply(env) == list(xla_cpu_flags.FLAGS)
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                      *xla_cpu_flags.FLAGS]
  assert xla_cpu_flags.apply(env) == []   # idempotent
  assert len(env["XLA_FLAGS"].split()) == 1 + len(xla_cpu_flags.FLAGS)


def test_keeps_a_flag_the_user_set(measured_jaxlib):
  env = {"XLA_FLAGS": f"{_YNN}=LIBRARY_FUSION_TYPE_DOT"}
  kept = [xla_cpu_flags.FLAGS[0], xla_cpu_flags.FLAGS[2]]
  assert xla_cpu_flags.apply(env) == kept
  assert env["XLA_FLAGS"] == " ".join([f"{_YNN}=LIBRARY_FUSION_TYPE_DOT", *kept])


def test_empty_environment(measured_jaxlib):
  env = {}
  xla_cpu_flags.apply(env)
  assert env["XLA_FLAGS"] == " ".join(xla_cpu_flags.FLAGS)


def test_opt_out_and_unmeasured_jaxlib(monkeypatch, measured_jaxlib):
  env = {"IRST_JAX_XLA_CPU_FLAGS": "0"}
  assert xla_cpu_flags.apply(env) == [] and "XLA_FLAGS" not in env
  monkeypatch.setattr(xla_cpu_flags, "_jaxlib_series", lambda: (99, 0))
  env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
  assert xla_cpu_flags.apply(env) == []
  assert env == {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}


def test_entry_point_settings_set_the_flags_before_the_backend_starts():
  # A fresh interpreter: the flags are in the environment and XLA accepts them (it aborts on
  # unknown flags) when the CPU backend compiles a convolution.
  code = ("import os\nfrom irst_jax import platform_settings\nplatform_settings.apply()\n"
          "import jax, jax.numpy as jnp\n"
          "x = jnp.ones((1, 8, 8, 4)); w = jnp.ones((3, 3, 4, 4))\n"
          "y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',\n"
          "    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
          "print(float(y[0, 4, 4, 0]), os.environ.get('XLA_FLAGS', ''))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu",
                            "PYTHONPATH": os.environ.get("PYTHONPATH", "")}).stdout.split()
  assert float(out[0]) == 36.0
  expected = list(xla_cpu_flags.FLAGS) if xla_cpu_flags._jaxlib_series() in \
      xla_cpu_flags.JAXLIB_SERIES else []
  assert out[1:] == expected
