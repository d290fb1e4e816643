"""irst_jax: single-frame infrared small target detection (IRSTD) in JAX/Flax."""

from irst_jax import xla_cpu_flags

xla_cpu_flags.apply()

__version__ = "0.1.0"
