"""A non-editable install works from an unrelated folder: every command of the package.

The package is built as a wheel by pip from a copy of this checkout's packaging files and
installed (`pip install --no-deps --target`, not editable) into a folder that is the only
entry of PYTHONPATH; the commands run from an empty folder, so they see neither the checkout
nor its repository-root `configs` package, and the installed copy comes before any editable
install of irst_jax in site-packages (the check below asserts it). A venv would do the same
here, but a venv made inside the CI's venv (`.ci/run`) would not see that venv's packages
(`venv --system-site-packages` exposes the base interpreter's), hence `--target`.

Cost: one train epoch of the tiny ACM-U-Net of tests/test_main.py (the programs its CLI test
compiles, shared through the session's compilation cache), its `--mode=eval`, `--mode=export`,
`predict` on two frames, `score` on six masks and `data.stats` on the fake NUAA-SIRST.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from irst_jax import checkpoints
from tests.conftest import FAKE_SPLITS

ROOT = pathlib.Path(__file__).resolve().parents[1]
_PACKAGING = ("setup.cfg", "pyproject.toml", "README.md")
# pip's messages when it cannot fetch a build backend (no index reachable)
_OFFLINE = ("Could not find a version that satisfies", "No matching distribution found",
            "NewConnectionError", "Network is unreachable", "Temporary failure in name resolution")


def _build_isolation_needed() -> bool:
  """True unless the installed setuptools can build a wheel by itself: setuptools >= 70.1
  (its own bdist_wheel) or the `wheel` package (read from the metadata: importing setuptools
  here would clash with the distutils that other packages imported)."""
  def version(name):
    try:
      return tuple(int(p) for p in re.findall(r"\d+", importlib.metadata.version(name))[:2])
    except importlib.metadata.PackageNotFoundError:
      return None
  setuptools = version("setuptools")
  return setuptools is None or (setuptools < (70, 1) and version("wheel") is None)


def _install(tmp_path: pathlib.Path) -> pathlib.Path:
  """Installs this checkout (a copy: the build writes build/ and *.egg-info) into a folder;
  returns it. Skips when pip is missing, or cannot fetch a build backend it needs."""
  if importlib.util.find_spec("pip") is None:
    pytest.skip("pip is not installed in this interpreter: cannot install the package")
  source, target = tmp_path / "source", tmp_path / "site"
  source.mkdir()
  for name in _PACKAGING:
    shutil.copy2(ROOT / name, source / name)
  shutil.copytree(ROOT / "irst_jax", source / "irst_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-input",
             "--disable-pip-version-check", "--target", str(target), str(source)]
  isolation = _build_isolation_needed()
  if not isolation:
    command.insert(4, "--no-build-isolation")
  out = subprocess.run(command, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PIP_ROOT_USER_ACTION="ignore"))
  if out.returncode != 0 and isolation and any(s in out.stderr for s in _OFFLINE):
    pytest.skip("pip cannot fetch a wheel build backend (setuptools >= 70.1 or wheel) "
                f"offline: {out.stderr.strip().splitlines()[-1]}")
  assert out.returncode == 0, out.stderr[-3000:]
  return target


def test_installed_package_runs_every_command_from_an_unrelated_folder(prepared_fake_nuaa,
                                                                         tmp_path):
  raw, data_dir = prepared_fake_nuaa
  site = _install(tmp_path)
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IRST_JAX_VERBOSE")}
  env.update(PYTHONPATH=str(site), JAX_PLATFORMS="cpu")

  def run(*args, timeout=600):
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, (args, out.stderr[-3000:])
    return out.stdout

  # The installed copy is imported (not the checkout, not an editable install), with its
  # configs; the repository-root `configs` package is out of reach.
  where = json.loads(run("-c", (
      "import importlib.util, json, irst_jax, irst_jax.configs as c; print(json.dumps(["
      "irst_jax.__file__, c.names(), str(c.path('acm_unet')), "
      "importlib.util.find_spec('configs') is None]))")).splitlines()[-1])
  assert where == [str(site / "irst_jax" / "__init__.py"),
                   ["acm_fpn", "acm_unet", "cgranet", "daea", "dnanet", "eaau_net"],
                   str(site / "irst_jax" / "configs" / "acm_unet.py"), True]

  # python -m irst_jax.main by config name, with tests/test_main.py's tiny network and data
  workdir = tmp_path / "run"
  trained = run("-m", "irst_jax.main", "--config=acm_unet:nuaa_sirst,smoke",
                f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
                f"--config.dataset.manual_dir={raw}", "--config.train.num_epochs=1",
                "--config.model.channels=(4, 8, 8, 16)", "--config.model.num_blocks=1",
                "--config.dataset.crop_size=32", "--config.dataset.pad_multiple=96")
  assert "final: IoU" in trained and "best (step 1)" in trained
  evaluated = run("-m", "irst_jax.main", "--mode=eval", f"--workdir={workdir}")
  best = json.loads((workdir / checkpoints.BEST_METRICS_FILE).read_text())
  assert f"IoU {best['IoU']:.4f}" in evaluated
  exported = run("-m", "irst_jax.main", "--mode=export", f"--workdir={workdir}")
  assert str(workdir / "export") in exported

  frames = cwd / "frames"
  frames.mkdir()
  for name in FAKE_SPLITS["50_50"]["test"][:2]:
    shutil.copy2(raw / "images" / f"{name}.png", frames / f"{name}.png")
  run("-m", "irst_jax.predict", f"--model={workdir / 'export'}", "--input=frames",
      "--output=predictions")
  assert sorted(p.name for p in (cwd / "predictions" / "masks").iterdir()) == sorted(
      f"{n}.png" for n in FAKE_SPLITS["50_50"]["test"][:2])

  # score: the true masks as predictions score 1 everywhere
  masks = cwd / "masks"
  masks.mkdir()
  for name in FAKE_SPLITS["50_50"]["test"]:
    shutil.copy2(raw / "masks" / f"{name}_pixels0.png", masks / f"{name}.png")
  scored = run("-m", "irst_jax.score", "--predictions=masks", "--dataset=nuaa_sirst",
               "--split=test", f"--data_dir={data_dir}", f"--manual_dir={raw}")
  assert "| masks | 1.0000 | 1.0000 | 1.0000 | 0.00 |" in scored

  stats = run("-m", "irst_jax.data.stats", "--dataset=nuaa_sirst", "--builder_config=50_50",
              f"--data_dir={data_dir}", f"--manual_dir={raw}", "--out_dir=stats")
  assert "nuaa_sirst / 50_50" in stats and len(list((cwd / "stats").glob("*.png"))) == 4
  # import_weights needs torch and an official weight file: its flags parse, it refuses a
  # missing file by name (exit 2, before any work)
  out = subprocess.run([sys.executable, "-m", "irst_jax.import_weights",
                        "--config=dnanet:nudt_sirst,pretrained_rgb", "--weights=absent.pth.tar",
                        f"--workdir={tmp_path / 'imported'}"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and "absent.pth.tar" in out.stderr.strip().splitlines()[-1], (
      out.stderr[-3000:])
