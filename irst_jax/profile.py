"""``python -m irst_jax.profile``: the command of :mod:`irst_jax.serving.profile` (parameters,
multiply-adds and FLOPs, peak memory and latency of a config's model); flags and behaviour are
that module's."""
from __future__ import annotations

from irst_jax import errors, platform_settings
from irst_jax.serving import profile

if __name__ == "__main__":
  platform_settings.apply()   # XLA CPU flags, on CPU only, before JAX starts
  profile.define_flags()
  errors.run_main(profile.main)
