"""The packaged config irst_jax/configs/daea.py (its docstring: command, cost, result, recipe);
`--config=configs/daea.py` here is `--config=daea` anywhere once irst_jax is installed."""
from irst_jax.configs.daea import get_config  # noqa: F401
