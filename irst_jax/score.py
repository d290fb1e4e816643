"""``python -m irst_jax.score``: the command of :mod:`irst_jax.evaluation.score`, kept at its
short name (README, scripts); flags and behaviour are that module's."""
from __future__ import annotations

from irst_jax import errors, platform_settings
from irst_jax.evaluation import score

if __name__ == "__main__":
  platform_settings.apply()   # XLA CPU flags, on CPU only, before JAX starts
  score.define_flags()
  errors.run_main(score.main)
