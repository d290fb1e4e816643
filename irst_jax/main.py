"""Command-line entry point.

  python -m irst_jax.main --config=acm_unet --workdir=runs/acm_unet
  python -m irst_jax.main --config=configs/acm_unet.py:nudt_sirst --workdir=runs/acm_unet \
      --config.train.num_epochs=5                          # override any config value
  python -m irst_jax.main --mode=eval --workdir=runs/acm_unet [--checkpoint=latest]
  python -m irst_jax.main --mode=export --workdir=runs/acm_unet [--export_dir=DIR] [--seed_index=I]
      [--format=jax|onnx|jax,onnx] [--onnx_size=512|HxW]   # onnx: the extra irst_jax[onnx]

Several hosts (JAX's multi-controller runtime, `irst_jax.distributed`): the same command on
every host with `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (I = 0 on
the host at HOST), or without them under a launcher JAX detects (Slurm `srun`, Open MPI
`mpirun`, Cloud TPU); the workdir and the TFDS data dir must be shared by every host.

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

from irst_jax import compilation_cache, distributed, errors, platform_settings, train
from irst_jax.evaluation import seeds, tables

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (PATH.py[:arg]) or packaged config name (acm_unet[:arg], ...: "
    "irst_jax/configs/).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, metrics).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "export"], "What to do.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "Checkpoint evaluated or exported by --mode=eval|export.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Artifact directory written by "
                                  "--mode=export (default: WORKDIR/export).")
_FORMAT = flags.DEFINE_list("format", ["jax"], "Artifact format(s) of --mode=export, "
                            "comma-separated: jax (jax.export module + weights) and/or onnx "
                            "(model.onnx, jax2onnx: pip install \"irst_jax[onnx]\").")
_ONNX_SIZE = flags.DEFINE_string("onnx_size", None, "Frame size of the ONNX graph: a side S or "
                                 "HEIGHTxWIDTH, multiples of 32 (the sensor's frames, e.g. "
                                 "512x640; smaller frames are padded, larger ones tiled; "
                                 "default 512).")
_EVAL_DIR = flags.DEFINE_string("eval_dir", None, "Report folder of --mode=eval (metrics.json, "
                                "roc.png, pr.png, grid.png; default WORKDIR/eval/CHECKPOINT_SPLIT).")
_PROTOCOL = flags.DEFINE_enum("protocol", None, ["basicirstd", "basicirstd_2023", "dnanet"],
                              "Evaluation protocol of --mode=eval (default: the config's "
                              "eval.protocol; irst_jax/evaluation/protocols.py).")
_SEED_INDEX = flags.DEFINE_integer("seed_index", None, "Replica exported by --mode=export from a "
                                   "run of train.num_seeds > 1 (replica i: seed train.seed + i; "
                                   "default: the best IoU in best_metrics.json).")
_SPLIT = flags.DEFINE_string("split", None, "Split evaluated by --mode=eval (default: the "
                             "config's dataset.eval_split).")
_TTA = flags.DEFINE_enum("tta", None, ["none", "flips", "flips_transpose"],
                         "Test-time augmentation of --mode=eval: the mean probability of the 4 "
                         "flips or the 8 flips of the image and its transpose (default: the "
                         "config's eval.tta; irst_jax/evaluation/tta.py).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Several processes: HOST:PORT "
                                   "of process 0 (jax.distributed.initialize); default: "
                                   "detected (Slurm, Open MPI, Cloud TPU), else one process.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several processes: how many "
                                      "(with --coordinator_address and --process_id).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several processes: this one's index, "
                                   "0 .. num_processes - 1 (0 on the coordinator's host).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Before any other use of JAX (the platform settings of __main__ come before it).
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  compilation_cache.enable()   # before the first compilation
  logging.info("JAX %s, process %d of %d, local devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_devices())
  if _MODE.value == "train":
    if _CONFIG.value is None:
      raise app.UsageError("--config is required for --mode=train")
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    final, best = result["final"], result["best"]
    print(f"final: {tables.metrics_line(final)}")
    if seeds.seeds_line(final):
      print(f"final {seeds.seeds_line(final)}")
    if best:
      print(f"best (step {int(best['step'])}): {tables.metrics_line(best)}")
      if seeds.seeds_line(best):
        print(f"best {seeds.seeds_line(best)}")
    print(f"train throughput: {result['images_per_sec']:.1f} images/s")
  elif _MODE.value == "export":
    from irst_jax.serving import export
    if distributed.is_primary():   # one artifact: with several processes, process 0 alone
      path = export.export_workdir(_WORKDIR.value, _EXPORT_DIR.value, _CHECKPOINT.value,
                                   seed_index=_SEED_INDEX.value, formats=_FORMAT.value,
                                   onnx_size=_ONNX_SIZE.value)
      print(f"exported the {_CHECKPOINT.value} checkpoint of {_WORKDIR.value} to {path}")
  else:
    values = train.evaluate_workdir(_WORKDIR.value, _CHECKPOINT.value, _CONFIG.value, _SPLIT.value,
                                    _EVAL_DIR.value, protocol=_PROTOCOL.value, tta=_TTA.value)
    print(tables.metrics_line(values))
    if seeds.seeds_line(values):
      print(seeds.seeds_line(values))
    print(tables.markdown_table({_CHECKPOINT.value: values}))
    print(json.dumps(values, indent=2))


if __name__ == "__main__":
  platform_settings.apply(malloc=True, huge_pages=True)   # CPU only, before JAX starts
  flags.mark_flag_as_required("workdir")
  errors.run_main(main)
