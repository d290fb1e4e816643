"""Command-line entry point.

  python -m irst_jax.main --config=acm_unet --workdir=runs/acm_unet
  python -m irst_jax.main --config=configs/acm_unet.py:nudt_sirst --workdir=runs/acm_unet \
      --config.train.num_epochs=5                          # override any config value
  python -m irst_jax.main --mode=eval --workdir=runs/acm_unet [--checkpoint=latest]
  python -m irst_jax.main --mode=export --workdir=runs/acm_unet [--export_dir=DIR]

`--config` is a config file (`PATH.py[:arg]`) or the name of a packaged config
(`acm_unet[:arg]`, irst_jax/configs/; `irst_jax.configs.resolve`).
`train` resumes from the workdir's latest checkpoint when there is one. `eval` uses the
config saved in the workdir unless --config is given, and the normalisation statistics the
run trained with (normalization.json). A user error (bad flag, config value or file) is one
line `error: ...` on stderr with exit status 2; --verbose adds the traceback
(irst_jax.errors).
"""
from __future__ import annotations

import json

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from irst_jax import compilation_cache, errors, platform_settings, train
from irst_jax.evaluation import tables

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (PATH.py[:arg]) or packaged config name (acm_unet[:arg], ...: "
    "irst_jax/configs/).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, metrics).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "export"], "What to do.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "Checkpoint evaluated or exported by --mode=eval|export.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Artifact directory written by "
                                  "--mode=export (default: WORKDIR/export).")
_EVAL_DIR = flags.DEFINE_string("eval_dir", None, "Report folder of --mode=eval (metrics.json, "
                                "roc.png, pr.png, grid.png; default WORKDIR/eval/CHECKPOINT_SPLIT).")
_PROTOCOL = flags.DEFINE_enum("protocol", None, ["basicirstd", "basicirstd_2023", "dnanet"],
                              "Evaluation protocol of --mode=eval (default: the config's "
                              "eval.protocol; irst_jax/evaluation/protocols.py).")
_SPLIT = flags.DEFINE_string("split", None, "Split evaluated by --mode=eval (default: the "
                             "config's dataset.eval_split).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compilation_cache.enable()   # before the first compilation
  logging.info("JAX %s, devices: %s", jax.__version__, jax.local_devices())
  if _MODE.value == "train":
    if _CONFIG.value is None:
      raise app.UsageError("--config is required for --mode=train")
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    final, best = result["final"], result["best"]
    print(f"final: {tables.metrics_line(final)}")
    if best:
      print(f"best (step {int(best['step'])}): {tables.metrics_line(best)}")
    print(f"train throughput: {result['images_per_sec']:.1f} images/s")
  elif _MODE.value == "export":
    from irst_jax.serving import export
    path = export.export_workdir(_WORKDIR.value, _EXPORT_DIR.value, _CHECKPOINT.value)
    print(f"exported the {_CHECKPOINT.value} checkpoint of {_WORKDIR.value} to {path}")
  else:
    values = train.evaluate_workdir(_WORKDIR.value, _CHECKPOINT.value, _CONFIG.value, _SPLIT.value,
                                    _EVAL_DIR.value, protocol=_PROTOCOL.value)
    print(tables.metrics_line(values))
    print(tables.markdown_table({_CHECKPOINT.value: values}))
    print(json.dumps(values, indent=2))


if __name__ == "__main__":
  platform_settings.apply(malloc=True, huge_pages=True)   # CPU only, before JAX starts
  flags.mark_flag_as_required("workdir")
  errors.run_main(main)
