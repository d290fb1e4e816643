"""TFDS builders of the IRSTD datasets (one module a dataset).

``BUILDERS`` maps the dataset name used in configs (``dataset_config.name``) to its
builder class. Importing this package registers the builders with TFDS, so
``tfds.builder('nuaa_sirst/50_50', data_dir=...)`` works too.
"""

from irst_jax.data.builders.nuaa_sirst import NuaaSirst

BUILDERS = {
    "nuaa_sirst": NuaaSirst,
}

__all__ = ["BUILDERS", "NuaaSirst"]
