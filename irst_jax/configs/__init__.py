"""Configs shipped with the package: the shared defaults (`default.py`) and one file a model
(`acm_unet.py`, `acm_fpn.py`, `eaau_net.py`, `dnanet.py`, `daea.py`, `cgranet.py`), each with
`get_config(arg)` (grammar: `default.apply_arg`).

Commands take a config by path or by the name of a packaged file: `--config=acm_unet:nuaa_sirst,
smoke` is `--config=<this folder>/acm_unet.py:nuaa_sirst,smoke` when no file `acm_unet` exists
in the working folder (`resolve_argv`, run by `irst_jax.errors.parse_flags` before absl parses
the flags, since ml_collections' `DEFINE_config_file` reads a path).
"""
from __future__ import annotations

import os
import pathlib
from typing import Sequence

from irst_jax import errors

_FOLDER = pathlib.Path(__file__).resolve().parent
_NOT_MODEL_CONFIGS = ("__init__", "default")


def names() -> list[str]:
  """The packaged model configs' names (file names without `.py`), sorted."""
  return sorted(p.stem for p in _FOLDER.glob("*.py") if p.stem not in _NOT_MODEL_CONFIGS)


def path(name: str) -> pathlib.Path:
  """The file of the packaged config `name` (e.g. 'acm_unet'); ValueError listing the names
  when there is none."""
  if name not in names():
    raise ValueError(f"no packaged config {name!r}; packaged configs: {', '.join(names())}")
  return _FOLDER / f"{name}.py"


def resolve(value: str, flag: str = "config") -> str:
  """A `--config` value 'FILE[:arg]' as given when FILE exists (relative to the working
  folder), else with a packaged config's name ('acm_unet', or 'acm_unet.py', no folder part)
  replaced by that file's absolute path.

  Raises:
    UserError: FILE is neither a file nor a packaged config's name (naming the packaged ones).
  """
  file, sep, arg = value.partition(":")
  if not file or os.path.isfile(file):
    return value
  name = file[:-3] if file.endswith(".py") else file
  if name in names() and os.sep not in file and "/" not in file:
    return f"{_FOLDER / (name + '.py')}{sep}{arg}"
  raise errors.UserError(
      f"--{flag}={value}: cannot load the config file (No such file {file!r}) and {name!r} is "
      f"not a packaged config; expected a Python file defining get_config() or one of "
      f"{', '.join(names())}, e.g. --{flag}=acm_unet[:arg]")


def resolve_argv(argv: Sequence[str], flag: str = "config") -> list[str]:
  """`argv` with the value of `--flag=VALUE` / `--flag VALUE` (one or two dashes) passed
  through `resolve`; other arguments, and everything after `--`, unchanged."""
  out, i = list(argv), 1
  while i < len(out):
    arg = out[i]
    if arg == "--":
      break
    for dashes in ("--", "-"):
      head = f"{dashes}{flag}"
      if arg.startswith(head + "="):
        out[i] = head + "=" + resolve(arg[len(head) + 1:], flag)
      elif arg == head and i + 1 < len(out):
        out[i + 1] = resolve(out[i + 1], flag)
        i += 1
      else:
        continue
      break
    i += 1
  return out
