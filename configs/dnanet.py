"""The packaged config irst_jax/configs/dnanet.py (its docstring: command, cost, result, recipe);
`--config=configs/dnanet.py` here is `--config=dnanet` anywhere once irst_jax is installed."""
from irst_jax.configs.dnanet import get_config  # noqa: F401
