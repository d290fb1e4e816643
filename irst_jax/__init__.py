"""irst_jax: single-frame infrared small target detection (IRSTD) in JAX/Flax."""

__version__ = "0.1.0"
