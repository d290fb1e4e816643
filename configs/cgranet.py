"""The packaged config irst_jax/configs/cgranet.py (its docstring: command, cost, result, recipe);
`--config=configs/cgranet.py` here is `--config=cgranet` anywhere once irst_jax is installed."""
from irst_jax.configs.cgranet import get_config  # noqa: F401
