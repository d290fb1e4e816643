"""Imports official PyTorch DNA-Net weights (.pth.tar) into an irst_jax workdir.

  python -m irst_jax.import_weights --config=dnanet:nudt_sirst,pretrained_rgb \
      --weights=mIoU__DNANet_NUDT-SIRST_epoch.pth.tar --workdir=runs/dnanet_official
  python -m irst_jax.main --mode=eval --workdir=runs/dnanet_official

The file is read with `torch.load(path, map_location='cpu', weights_only=True)` (PyTorch is an
optional extra: `pip install 'irst_jax[torch]'`). The official DNA-Net training code
(YeRen123455/Infrared-Small-Target-Detection, train.py and model/utils.py `save_model`) saves
`mIoU__DNANet_<dataset>_epoch.pth.tar` holding `{'epoch', 'state_dict': model.state_dict(),
'loss', 'mean_IOU'}` for a model without DataParallel, 3 input channels; a bare
state_dict and dicts nesting it under 'model' or 'net' are accepted too, and DataParallel's
'module.' prefixes are dropped. NumPy scalars and dtypes in such metadata (the official
'mean_IOU' is a numpy float) are allowed by the weights-only unpickler; any other class in
the file is refused.

The state_dict is converted with `convert.dnanet_rules` for the config's backbone,
deep supervision and `model.in_channels` (NCHW -> NHWC, `convert.convert_state_dict`); a file
that does not fit raises `convert.ConversionError` naming the first missing, unused or
mis-shaped tensor. The workdir is written as training writes it: `config.json` and a
training state (params, batch statistics, a fresh optimiser state, step 0, epoch 0, the
config's seed-derived RNG) as both the latest checkpoint and `best/`. No `best_metrics.json`
is written (the weights have not been evaluated here), so `--mode=eval` reports them and a
training run started in the workdir fine-tunes them, its first evaluation becoming the best.

The official weights take RGB input normalised with ImageNet's mean/std; the config argument
`pretrained_rgb` of irst_jax/configs/dnanet.py sets `model.in_channels=3` and
`dataset.normalization='imagenet_rgb'` (irst_jax/data/pipeline.py, which also states where
replicated grey differs from the official RGB reading).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from irst_jax import (
  checkpoints,
  compilation_cache,
  convert,
  errors,
  models,
  optim,
  platform_settings,
  train,
)
from irst_jax.data import pipeline

#: Keys under which a checkpoint dict may nest its state_dict, in the order tried.
NESTED_KEYS = ("state_dict", "model", "net")

#: Globals allowed besides torch's own weights-only set: numpy scalars and dtypes, which
#: carry data only (the official checkpoints store 'mean_IOU' as a numpy float).
_NUMPY_GLOBAL = re.compile(r"numpy\.(_?core\.multiarray\.scalar|dtype|dtypes\.\w+DType)")

IMPORT_RECORD = "imported_weights.json"


def _torch():
  try:
    import torch
  except ImportError:
    raise errors.MissingDependencyError("reading .pth/.pth.tar weights needs PyTorch: pip install "
                      "'irst_jax[torch]' (or pip install torch)") from None
  return torch


def _numpy_safe_globals(torch, path: pathlib.Path) -> list[tuple[Any, str]]:
  """(object, name) of the numpy globals the file references, for `safe_globals`;
  the globals of any other module are left out (and so refused by the load)."""
  try:
    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
  except Exception:   # not a zip-format checkpoint: torch.load reports what it finds
    return []
  found = []
  for name in names:
    if _NUMPY_GLOBAL.fullmatch(name):
      module, attr = name.rsplit(".", 1)
      found.append((getattr(importlib.import_module(module), attr), name))
  if found:   # np.dtype(...) builds an instance of a concrete class such as Float64DType
    found += [c for c in vars(np.dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)]
  return found


def load_torch_file(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads a PyTorch weight file: (state_dict as name -> numpy array, metadata).

  The metadata are the file's other top-level entries that are numbers or strings (e.g.
  'epoch', 'mean_IOU' of the official DNA-Net files), as Python values.

  Raises:
    ImportError: PyTorch is not installed (says how to install it).
    FileNotFoundError: `path` does not exist.
    ValueError: the file holds no state_dict (names the top-level keys found), or cannot be
      read with weights_only=True (the file's own error, e.g. a class it needs).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weight file {path} not found")
  torch = _torch()
  try:
    with torch.serialization.safe_globals(_numpy_safe_globals(torch, path)):
      data = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:   # torch raises UnpicklingError, RuntimeError, ... by file
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    detail = next((line for line in lines if "Unsupported global" in line), lines[0])
    raise ValueError(f"cannot read {path} as a PyTorch weights file with weights_only=True: "
                     f"{detail}") from e
  state, metadata = _unwrap(data, path)
  return {k: v.detach().cpu().numpy() for k, v in state.items()}, metadata


def _unwrap(data: Any, path: pathlib.Path) -> tuple[Mapping, dict[str, Any]]:
  is_tensor_dict = lambda d: (isinstance(d, Mapping) and d
                              and all(hasattr(v, "detach") for v in d.values()))
  if is_tensor_dict(data):
    return data, {}
  if isinstance(data, Mapping):
    for key in NESTED_KEYS:
      if is_tensor_dict(data.get(key)):
        metadata = {k: v.item() if hasattr(v, "item") else v for k, v in data.items()
                    if k != key and isinstance(v, (int, float, str, np.generic))}
        return data[key], metadata
    found = sorted(map(str, data))[:10]
    raise ValueError(f"{path} holds no state_dict: its top-level keys are {found}; expected "
                     f"a dict of tensors or a dict with one under {list(NESTED_KEYS)}")
  raise ValueError(f"{path} holds a {type(data).__name__}, not a state_dict")


def dnanet_rules_for(model, in_channels: int) -> list[convert.Rule]:
  """The conversion rules of a `dnanet.DNANet` built from a config."""
  nb_filter, num_blocks, residual = model.resolved()
  return convert.dnanet_rules(num_blocks, model.deep_supervision, residual, in_channels,
                              nb_filter)


def _check_input_channels(state: Mapping[str, np.ndarray], in_channels: int) -> None:
  first = state.get("conv0_0.0.conv1.weight")
  if first is not None and first.ndim == 4 and first.shape[1] != in_channels:
    raise convert.ConversionError(
        f"tensor 'conv0_0.0.conv1.weight' has shape {tuple(first.shape)}: the file's model "
        f"takes {first.shape[1]} input channel(s) but model.in_channels={in_channels}; use "
        f"--config.model.in_channels={first.shape[1]} (official weights: the config argument "
        "'pretrained_rgb', which also sets dataset.normalization='imagenet_rgb')")


def imported_state(config: ml_collections.ConfigDict, state_dict: Mapping[str, Any]
                   ) -> train.TrainState:
  """A TrainState (step 0, fresh optimiser state) holding the converted `state_dict`.

  Raises:
    ValueError: the model is not DNA-Net, or model.in_channels does not match the channels
      of dataset.normalization (`pipeline.check_channels`).
    convert.ConversionError: the state_dict does not fit the model (names the tensor).
  """
  if config.model.name != "dnanet":
    raise ValueError(f"importing PyTorch weights supports model 'dnanet' (the official "
                     f"DNA-Net), not {config.model.name!r}")
  pipeline.check_channels(config.dataset, config.model.in_channels)
  model = models.create_model(config.model, axis_name=train.AXIS)
  crop = config.dataset.crop_size
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, crop, crop, config.model.in_channels)))
  state = convert.strip_prefixes(state_dict)
  _check_input_channels(state, config.model.in_channels)
  variables = convert.convert_state_dict(state, dnanet_rules_for(model, config.model.in_channels),
                                         shapes)
  tx, _ = optim.create_optimizer(config.optim, 1, config.train.num_epochs)
  # the RNG create_train_state derives from the seed, so a fine-tuning run starts as training
  _, rng = jax.random.split(jax.random.PRNGKey(config.train.seed))
  return train.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                 batch_stats=variables["batch_stats"], tx=tx, rng=rng)


def import_weights(config: ml_collections.ConfigDict, weights: str | pathlib.Path,
                   workdir: str | pathlib.Path) -> dict[str, Any]:
  """Converts the weight file and writes `workdir` (see the module docstring).

  Returns the record also written to workdir/imported_weights.json: the file, its SHA-256,
  tensor and parameter counts and the file's metadata (e.g. 'epoch', 'mean_IOU').
  Raises what `load_torch_file` and `imported_state` raise, and
  checkpoints.WorkdirMismatchError when the workdir holds another model's run; a workdir
  that already holds checkpoints is refused (ValueError) rather than overwritten.
  """
  weights = pathlib.Path(weights)
  workdir = pathlib.Path(workdir).absolute()
  state_dict, metadata = load_torch_file(weights)
  state = imported_state(config, state_dict)
  for sub in ("checkpoints", "best"):
    if (workdir / sub).is_dir() and any((workdir / sub).iterdir()):
      raise ValueError(f"{workdir / sub} already holds checkpoints; import into a new workdir")
  workdir.mkdir(parents=True, exist_ok=True)
  checkpoints.save_config(workdir, config)
  host_state = jax.tree_util.tree_map(np.asarray, train._checkpoint_state(state, 0))
  store = checkpoints.CheckpointStore(workdir, keep=config.train.keep_checkpoints)
  try:
    store.save_latest(0, host_state)
    # best/ without best_metrics.json: the weights are the best until an evaluation says more
    store.set_best(0, host_state)
  finally:
    store.close()
  record = {"weights": str(weights.absolute()),
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "tensors": len(state_dict),
            "parameters": int(sum(np.size(p) for p in jax.tree_util.tree_leaves(state.params))),
            "file_metadata": metadata}
  (workdir / IMPORT_RECORD).write_text(json.dumps(record, indent=2, default=str))
  return record


def define_flags() -> None:
  """The command's flags; defined only when run as a command, since irst_jax.main defines
  flags of the same names."""
  config_flags.DEFINE_config_file(
      "config", None, "Config file or packaged config name, e.g. dnanet:nudt_sirst,pretrained_rgb.",
      lock_config=True)
  flags.DEFINE_string("weights", None, "PyTorch weight file (.pth / .pth.tar).")
  flags.DEFINE_string("workdir", None, "New run directory to write.")
  flags.mark_flags_as_required(["config", "weights", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compilation_cache.enable()
  f = flags.FLAGS
  record = import_weights(f.config, f.weights, f.workdir)
  print(json.dumps(record, indent=2, default=str))
  print(f"evaluate: python -m irst_jax.main --mode=eval --workdir={f.workdir}")


if __name__ == "__main__":
  platform_settings.apply()   # XLA CPU flags, on CPU only, before JAX starts
  define_flags()
  errors.run_main(main)
