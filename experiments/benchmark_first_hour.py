"""Wall times of a new user's first commands, cold and warm compilation cache (issue 20 targets).

  python experiments/benchmark_first_hour.py [--parts=smoke,eval,predict] \
      [--workdir=runs/acm_unet_nuaa_sirst] \
      [--predict_model=runs/acm_unet_nuaa_sirst/export --predict_input=DIR] [--strict]

Each command runs in a fresh Python subprocess from the repository root, with the persistent
compilation cache (irst_jax/compilation_cache.py) in a folder of its own: "cold" is an empty
folder, "warm" the folder the cold run filled. Measured (whole command, start-up included):

  smoke          python -m irst_jax.main --config=configs/acm_unet.py:nuaa_sirst,smoke
                 --workdir=<new folder>, cold and warm     targets <= 120 s, <= 45 s
  eval           python -m irst_jax.main --mode=eval --workdir=WORKDIR --eval_dir=<new
                 folder> (a trained ACM-U-Net workdir), cold   target <= 60 s
  predict        python -m irst_jax.predict --model=PREDICT_MODEL --input=PREDICT_INPUT
                 --output=<new folder>, cold and warm; images/s = images written / seconds
                 targets >= 5 and >= 20 images/s (NUAA-SIRST's 214 test images)

The dataset must be prepared already (TFDS_DATA_DIR); a part whose inputs are not given or
missing is skipped. Prints one row a measurement: value, target, ratio value / target and
whether it meets the target, plus the load average (the numbers mean little on a busy
machine). Exit status 0, or 1 with --strict when a target is missed or a command fails.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_ROOT = pathlib.Path(__file__).resolve().parents[1]

_PARTS = flags.DEFINE_list("parts", ["smoke", "eval", "predict"], "Which measurements.")
_SMOKE_CONFIG = flags.DEFINE_string("smoke_config", "configs/acm_unet.py:nuaa_sirst,smoke",
                                    "Config of the smoke run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Trained ACM-U-Net workdir for --mode=eval "
                               "(with a best/ checkpoint); unset: eval skipped.")
_PREDICT_MODEL = flags.DEFINE_string("predict_model", None, "Exported model (or workdir) for "
                                     "predict; unset: predict skipped.")
_PREDICT_INPUT = flags.DEFINE_string("predict_input", None, "Folder of images for predict "
                                     "(e.g. the NUAA-SIRST test images).")
_STRICT = flags.DEFINE_bool("strict", False, "Exit 1 when a target is missed.")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "Seconds before a command is given up.")

#: (seconds, at most) or (images/s, at least) of issue 20.
TARGETS = {
    "smoke cold": (120.0, "max"), "smoke warm": (45.0, "max"), "eval cold": (60.0, "max"),
    "predict cold": (5.0, "min"), "predict warm": (20.0, "min"),
}


def _run(args: list[str], cache: pathlib.Path) -> float:
  """Seconds of `python args` from the repository root with its cache in `cache`.

  Raises:
    RuntimeError: the command failed (with its output's tail).
  """
  env = dict(os.environ)
  env["IRST_JAX_COMPILATION_CACHE_DIR"] = str(cache)
  env.pop("IRST_JAX_COMPILATION_CACHE", None)
  env["PYTHONPATH"] = os.pathsep.join([str(_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
  start = time.perf_counter()
  out = subprocess.run([sys.executable] + args, cwd=_ROOT, env=env, capture_output=True,
                       text=True, timeout=_TIMEOUT.value)
  seconds = time.perf_counter() - start
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}")
  return seconds


def _smoke(tmp: pathlib.Path, rows: list) -> None:
  cache = tmp / "smoke_cache"
  for kind in ("cold", "warm"):
    seconds = _run(["-m", "irst_jax.main", f"--config={_SMOKE_CONFIG.value}",
                    f"--workdir={tmp / f'smoke_{kind}'}"], cache)
    rows.append((f"smoke {kind}", seconds, "s"))


def _eval(tmp: pathlib.Path, rows: list) -> None:
  workdir = pathlib.Path(_WORKDIR.value or "")
  if not _WORKDIR.value or not (workdir / "best").is_dir() or not any((workdir / "best").iterdir()):
    print(f"eval skipped: no --workdir with a best/ checkpoint ({_WORKDIR.value})")
    return
  seconds = _run(["-m", "irst_jax.main", "--mode=eval", f"--workdir={workdir}",
                  f"--eval_dir={tmp / 'eval'}"], tmp / "eval_cache")
  rows.append(("eval cold", seconds, "s"))


def _predict(tmp: pathlib.Path, rows: list) -> None:
  if not _PREDICT_MODEL.value or not _PREDICT_INPUT.value:
    print("predict skipped: give --predict_model and --predict_input")
    return
  cache = tmp / "predict_cache"
  for kind in ("cold", "warm"):
    output = tmp / f"predict_{kind}"
    seconds = _run(["-m", "irst_jax.predict", f"--model={_PREDICT_MODEL.value}",
                    f"--input={_PREDICT_INPUT.value}", f"--output={output}"], cache)
    images = len(list((output / "masks").glob("*.png")))
    rows.append((f"predict {kind}", images / seconds, f"images/s ({images} in {seconds:.1f} s)"))


def main(argv):
  del argv
  rows: list[tuple[str, float, str]] = []
  parts = {"smoke": _smoke, "eval": _eval, "predict": _predict}
  unknown = sorted(set(_PARTS.value) - set(parts))
  if unknown:
    raise app.UsageError(f"unknown --parts {unknown}; expected some of {sorted(parts)}")
  failed = False
  print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
  with tempfile.TemporaryDirectory(prefix="irst_first_hour_") as tmp:
    for name in _PARTS.value:
      try:
        parts[name](pathlib.Path(tmp), rows)
      except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"{name} failed: {e}", flush=True)
        failed = True
      for row in rows:
        if row[0].startswith(name):
          print(f"  {row[0]}: {row[1]:.1f} {row[2]}", flush=True)
  print(f"load average after: {os.getloadavg()[0]:.2f}\n")
  print("| measurement | value | target | value / target | met |")
  print("|---|---|---|---|---|")
  for name, value, unit in rows:
    target, kind = TARGETS[name]
    met = value <= target if kind == "max" else value >= target
    failed |= not met
    bound = "<=" if kind == "max" else ">="
    print(f"| {name} | {value:.1f} {unit} | {bound} {target:g} | {value / target:.2f} | "
          f"{'yes' if met else 'NO'} |")
  return 1 if failed and _STRICT.value else 0


if __name__ == "__main__":
  app.run(main)
