"""Persistent JAX compilation cache, on by default for every command.

XLA compilation of the train and eval steps takes seconds to minutes on a CPU; JAX can store
compiled programs on disk and load them in later processes
(https://docs.jax.dev/en/latest/persistent_compilation_cache.html). :func:`enable`, called at
the start of each command's ``main()``, turns that on so that a second run compiles nothing
it compiled before:

- folder: ``$IRST_JAX_COMPILATION_CACHE_DIR`` if set; else JAX's own setting if the user made
  one (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config.update("jax_compilation_cache_dir", ...)``),
  kept as it is; else ``$XDG_CACHE_HOME/irst_jax/jax_cache`` (``~/.cache/irst_jax/jax_cache``
  when ``XDG_CACHE_HOME`` is unset);
- every program is stored, however fast its compilation and small its entry
  (``jax_persistent_cache_min_compile_time_secs = 0``, ``..._min_entry_size_bytes = -1``),
  unless the user set these (environment or ``jax.config``);
- ``IRST_JAX_COMPILATION_CACHE=0`` (or ``false``, ``no``, ``off``) turns it off: JAX's own
  settings are then left untouched.

The folder grows without bound (JAX's default); delete it, or set JAX's
``JAX_COMPILATION_CACHE_MAX_SIZE`` (bytes, needs the ``filelock`` package), to bound it. The
cache is trusted code: do not share the folder with users you do not trust (JAX's warning).
"""
from __future__ import annotations

import os
import pathlib

import jax
from absl import logging

ENV_SWITCH = "IRST_JAX_COMPILATION_CACHE"
ENV_DIR = "IRST_JAX_COMPILATION_CACHE_DIR"
_OFF = ("0", "false", "no", "off")

_enabled: str | None = None   # the folder enable() set up, for idempotence


def default_dir() -> pathlib.Path:
  """``$XDG_CACHE_HOME/irst_jax/jax_cache``, else ``~/.cache/irst_jax/jax_cache``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "irst_jax" / "jax_cache"


def is_disabled() -> bool:
  """True when ``IRST_JAX_COMPILATION_CACHE`` turns the cache off."""
  return os.environ.get(ENV_SWITCH, "").strip().lower() in _OFF


def cache_dir() -> str | None:
  """The folder :func:`enable` uses (see the module docstring), or None when turned off."""
  if is_disabled():
    return None
  if os.environ.get(ENV_DIR):
    return os.path.expanduser(os.environ[ENV_DIR])
  current = jax.config.jax_compilation_cache_dir   # JAX_COMPILATION_CACHE_DIR or an update()
  if current:
    return str(current)
  return str(default_dir())


def _set_unless_user_set(name: str, value) -> None:
  default = {"jax_persistent_cache_min_compile_time_secs": 1.0,
             "jax_persistent_cache_min_entry_size_bytes": 0}[name]
  if name.upper() in os.environ or getattr(jax.config, name) != default:
    return
  jax.config.update(name, value)


def enable() -> str | None:
  """Turns on the persistent compilation cache; returns its folder (None when turned off).

  Idempotent; call it before the first compilation (JAX reads the folder once, at the first
  compile). A folder that cannot be created only logs a warning: the cache saves time, a
  command never fails for it.
  """
  global _enabled
  path = cache_dir()
  if path is None:
    return None
  if _enabled == path:
    return path
  try:
    pathlib.Path(path).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache off: cannot create %s (%s)", path, e)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  _set_unless_user_set("jax_persistent_cache_min_compile_time_secs", 0.0)
  _set_unless_user_set("jax_persistent_cache_min_entry_size_bytes", -1)
  _enabled = path
  logging.info("JAX compilation cache: %s", path)
  return path
