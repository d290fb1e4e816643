"""TFDS builders of the IRSTD datasets (one module a dataset; shared code in ``base``).

``BUILDERS`` maps the dataset name used in configs (``dataset_config.name``) to its
builder class. Importing this package registers the builders with TFDS, so
``tfds.builder('nuaa_sirst/50_50', data_dir=...)`` works too.

| name | configs: splits (sizes on the published data) |
|---|---|
| ``nuaa_sirst`` | ``50_50``: train 213 / test 214; ``acm``: train 256 / val 85 / test 86 |
| ``nudt_sirst`` | ``50_50``: train 663 / test 664 |
| ``mdvsfa_cgan`` | ``official``: train 9,978 / test 100 / train_half 4,989 / val_half 4,989 |
"""

from irst_jax.data.builders.mdvsfa_cgan import MdvsfaCgan
from irst_jax.data.builders.nuaa_sirst import NuaaSirst
from irst_jax.data.builders.nudt_sirst import NudtSirst

BUILDERS = {
    "nuaa_sirst": NuaaSirst,
    "nudt_sirst": NudtSirst,
    "mdvsfa_cgan": MdvsfaCgan,
}

__all__ = ["BUILDERS", "MdvsfaCgan", "NuaaSirst", "NudtSirst"]
