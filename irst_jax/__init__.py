"""irst_jax: single-frame infrared small target detection (IRSTD) in JAX/Flax.

Importing it changes no environment variable, flag or allocator: the command-line entry points
apply the CPU process settings (`irst_jax.platform_settings`).
"""

__version__ = "0.1.0"
