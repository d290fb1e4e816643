"""The shared defaults of every config, kept in the package: irst_jax/configs/default.py.

This file lets config files written against the repository's `configs` package
(`from configs import default`) keep working.
"""
from irst_jax.configs.default import (  # noqa: F401
    DATASET_DEFAULTS,
    DATASETS,
    apply_arg,
    get_base_config,
)
