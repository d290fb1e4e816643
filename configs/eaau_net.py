"""The packaged config irst_jax/configs/eaau_net.py (its docstring: command, cost, result, recipe);
`--config=configs/eaau_net.py` here is `--config=eaau_net` anywhere once irst_jax is installed."""
from irst_jax.configs.eaau_net import get_config  # noqa: F401
