"""The packaged config irst_jax/configs/acm_fpn.py (its docstring: command, cost, result, recipe);
`--config=configs/acm_fpn.py` here is `--config=acm_fpn` anywhere once irst_jax is installed."""
from irst_jax.configs.acm_fpn import get_config  # noqa: F401
