"""The packaged config irst_jax/configs/acm_unet.py (its docstring: command, cost, result, recipe);
`--config=configs/acm_unet.py` here is `--config=acm_unet` anywhere once irst_jax is installed."""
from irst_jax.configs.acm_unet import get_config  # noqa: F401
