"""Tests of irst_jax/compilation_cache.py, each case in a fresh Python process (JAX reads its
cache settings once per process)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]

_REPORT = """
import json, jax
from irst_jax import compilation_cache
first = compilation_cache.enable()
second = compilation_cache.enable()
print(json.dumps({"enabled": first, "again": second,
                  "dir": jax.config.jax_compilation_cache_dir,
                  "min_time": jax.config.jax_persistent_cache_min_compile_time_secs,
                  "min_size": jax.config.jax_persistent_cache_min_entry_size_bytes}))
"""

_COMPILE = """
import json, jax, jax.numpy as jnp
from irst_jax import compilation_cache
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
compilation_cache.enable()
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0 + 1.0)
print(json.dumps({"value": float(f(jnp.arange(12.0).reshape(3, 4))),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "requests": events.count("/jax/compilation_cache/compile_requests_use_cache")}))
"""


def _run(code: str, tmp_path: pathlib.Path, **env_overrides) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "IRST_JAX_COMPIL",
                              "XDG_CACHE_HOME"))}
  env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(_ROOT), JAX_PLATFORMS="cpu")
  env.update({k: str(v) for k, v in env_overrides.items() if v is not None})
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=_ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_folder_under_home_cache(tmp_path):
  got = _run(_REPORT, tmp_path)
  folder = tmp_path / "home" / ".cache" / "irst_jax" / "jax_cache"
  assert got == {"enabled": str(folder), "again": str(folder), "dir": str(folder),
                 "min_time": 0.0, "min_size": -1}
  assert folder.is_dir()


def test_xdg_cache_home(tmp_path):
  got = _run(_REPORT, tmp_path, XDG_CACHE_HOME=tmp_path / "xdg")
  assert got["dir"] == got["enabled"] == str(tmp_path / "xdg" / "irst_jax" / "jax_cache")


def test_override_and_users_jax_settings(tmp_path):
  mine = tmp_path / "mine"
  got = _run(_REPORT, tmp_path, IRST_JAX_COMPILATION_CACHE_DIR=mine)
  assert got["dir"] == str(mine) and mine.is_dir()
  # The user's own JAX settings are kept (the test suite sets them in conftest.py) ...
  theirs = tmp_path / "theirs"
  got = _run(_REPORT, tmp_path, JAX_COMPILATION_CACHE_DIR=theirs,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  assert (got["dir"], got["min_time"], got["min_size"]) == (str(theirs), 0.5, -1)
  # ... unless this project's own variable names a folder.
  got = _run(_REPORT, tmp_path, JAX_COMPILATION_CACHE_DIR=theirs,
             IRST_JAX_COMPILATION_CACHE_DIR=mine)
  assert got["dir"] == str(mine)


@pytest.mark.parametrize("off", ["0", "false", "OFF"])
def test_turned_off(tmp_path, off):
  got = _run(_REPORT, tmp_path, IRST_JAX_COMPILATION_CACHE=off)
  assert got == {"enabled": None, "again": None, "dir": None, "min_time": 1.0, "min_size": 0}
  assert not (tmp_path / "home" / ".cache").exists()
  # Off leaves a JAX setting of the user's as it is.
  got = _run(_REPORT, tmp_path, IRST_JAX_COMPILATION_CACHE=off,
             JAX_COMPILATION_CACHE_DIR=tmp_path / "theirs")
  assert (got["enabled"], got["dir"], got["min_time"]) == (None, str(tmp_path / "theirs"), 1.0)


def test_unusable_folder_only_warns(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  got = _run(_REPORT, tmp_path, IRST_JAX_COMPILATION_CACHE_DIR=blocker / "cache")
  assert got["enabled"] is None and got["dir"] is None


def test_second_process_loads_from_the_cache(tmp_path):
  folder = tmp_path / "cache"
  first = _run(_COMPILE, tmp_path, IRST_JAX_COMPILATION_CACHE_DIR=folder)
  entries = sorted(p.name for p in folder.iterdir())
  assert first["hits"] == 0 and first["requests"] >= 1 and entries
  second = _run(_COMPILE, tmp_path, IRST_JAX_COMPILATION_CACHE_DIR=folder)
  # Every program the second process compiles comes from the cache; nothing new is written.
  assert second["value"] == first["value"]
  assert second["hits"] == second["requests"] == first["requests"]
  assert sorted(p.name for p in folder.iterdir()) == entries
