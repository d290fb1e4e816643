"""Helpers of `gpu_suite.sh`: versions, config-field checks and the Markdown summary.

  python experiments/gpu_suite_helpers.py versions OUT.json
  python experiments/gpu_suite_helpers.py overrides CONFIG[:ARG] FIELD=VALUE ...
  python experiments/gpu_suite_helpers.py summary SCRATCH OUT.md

`versions` records the Python and package versions and the devices JAX and PyTorch see (each
import tried on its own, so a missing package is named, not fatal). `overrides` prints, one a
line, the `--config.FIELD=VALUE` flags whose FIELD the config has (a field renamed in the
library is left out, with a note on stderr, instead of failing the run). `summary` reads what
the suite left in SCRATCH (steps.tsv, versions.json, golden.xml, bench_*.json, runs/*/ and
logs/) and writes the Markdown summary; it needs only the standard library, so it works even
when the suite's dependencies failed to install.
"""
from __future__ import annotations

import importlib
import json
import pathlib
import platform
import re
import statistics
import sys
import xml.etree.ElementTree as ET
from importlib import metadata

#: Distributions whose versions are recorded (import name in brackets where it differs).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "numpy", "grain",
            "tensorflow-datasets", "ml-collections", "tensorboardX", "protobuf")
MODELS = ("acm_unet", "dnanet")


def versions(out: str) -> None:
  """Writes {'python', 'packages': {name: version or None}, 'jax_devices', 'torch_cuda'}."""
  result = {"python": platform.python_version(), "executable": sys.executable, "packages": {}}
  for name in PACKAGES:
    try:
      result["packages"][name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      result["packages"][name] = None
  try:
    jax = importlib.import_module("jax")
    result["jax_backend"] = jax.default_backend()
    result["jax_devices"] = [str(d.device_kind) for d in jax.devices()]
  except Exception as e:  # noqa: BLE001  (recorded, not fatal)
    result["jax_error"] = f"{type(e).__name__}: {e}"
  try:
    torch = importlib.import_module("torch")
    result["torch_cuda"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                            else None)
  except Exception as e:  # noqa: BLE001
    result["torch_error"] = f"{type(e).__name__}: {e}"
  pathlib.Path(out).write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))


def overrides(config_spec: str, assignments: list[str]) -> None:
  """Prints `--config.FIELD=VALUE` for each FIELD=VALUE whose FIELD `config_spec` has."""
  import importlib.util  # noqa: PLC0415

  path, _, arg = config_spec.partition(":")
  spec = importlib.util.spec_from_file_location("gpu_suite_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for assignment in assignments:
    field, _, _ = assignment.partition("=")
    node, ok = config, True
    for part in field.split("."):
      if part not in node:
        ok = False
        break
      node = node[part]
    if ok:
      print(f"--config.{assignment}")
    else:
      print(f"note: {path} has no field {field}; --config.{assignment} left out",
            file=sys.stderr)


# -- summary --------------------------------------------------------------------------------

def _num(x, fmt: str = ".4g") -> str:
  return "-" if x is None else format(x, fmt)


def _steps(scratch: pathlib.Path) -> dict[str, dict]:
  """steps.tsv rows (name, status, seconds, limit) by name, in order."""
  rows = {}
  path = scratch / "steps.tsv"
  if path.exists():
    for line in path.read_text().splitlines():
      name, status, seconds, limit = line.split("\t")
      rows[name] = {"status": status, "seconds": int(seconds), "limit": int(limit)}
  return rows


def _golden(scratch: pathlib.Path) -> dict | None:
  """{'tests', 'passed', 'failed', 'skipped', 'seconds', 'failures'} of golden.xml (JUnit)."""
  path = scratch / "golden.xml"
  if not path.exists():
    return None
  root = ET.parse(path).getroot()
  suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
  total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors",
                                                              "skipped")}
  failed = [c.get("name") for c in root.iter("testcase")
            if c.find("failure") is not None or c.find("error") is not None]
  return {"tests": total["tests"], "failed": total["failures"] + total["errors"],
          "skipped": total["skipped"],
          "passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
          "seconds": sum(float(s.get("time", 0)) for s in suites), "failures": failed}


def _run(scratch: pathlib.Path, model: str) -> dict | None:
  """Epochs, throughput and the final / best evaluation of runs/<model>, or None."""
  workdir = scratch / "runs" / model
  if not workdir.exists():
    return None
  result = {"planned": None, "epoch": None, "final": None, "best": None, "images_per_sec": None}
  config = workdir / "config.json"
  if config.exists():
    result["planned"] = json.loads(config.read_text()).get("train", {}).get("num_epochs")
  metrics = workdir / "metrics.jsonl"
  records = []
  if metrics.exists():
    for line in metrics.read_text().splitlines():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:   # a line cut by a kill
        pass
  if records:
    result["epoch"] = max(r.get("epoch", 0) for r in records)
  evals = [r for r in records if r.get("split") != "train" and "IoU" in r]
  if evals:
    result["final"] = evals[-1]
    result["best"] = max(evals, key=lambda r: r["IoU"])
  log = scratch / "logs" / f"train_{model}.log"
  found = re.findall(r"train throughput: ([0-9.]+) images/s", log.read_text()) \
      if log.exists() else []
  logged = [r["images_per_sec"] for r in records if r.get("split") == "train"
            and isinstance(r.get("images_per_sec"), (int, float)) and r["images_per_sec"] > 0]
  if found:   # printed at the end of the run: the median over its epochs
    result["images_per_sec"] = float(found[-1])
  elif logged:   # a run stopped before its end: the median of the epochs it logged
    result["images_per_sec"] = statistics.median(logged)
  return result


def summary(scratch: str, out: str) -> str:
  """Writes the suite's Markdown summary from what it left in `scratch`; returns the text."""
  scratch = pathlib.Path(scratch)
  meta = json.loads((scratch / "meta.json").read_text()) if (scratch / "meta.json").exists() \
      else {}
  steps = _steps(scratch)
  smoke = meta.get("smoke", False)
  lines = [f"# GPU suite{' (smoke, tiny settings: plumbing only)' if smoke else ''}", "",
           f"Command: `{meta.get('command', 'experiments/gpu_suite.sh')}`; started "
           f"{meta.get('started', '?')}; budget {meta.get('budget_s', '?')} s; commit "
           f"{meta.get('commit', '?')}.", "", "## Device and versions", "",
           "| item | value |", "|---|---|"]
  gpu = scratch / "nvidia_smi.csv"
  lines.append(f"| nvidia-smi | {gpu.read_text().strip() if gpu.exists() else 'not found'} |")
  vpath = scratch / "versions.json"
  if vpath.exists():
    v = json.loads(vpath.read_text())
    lines.append(f"| python | {v['python']} |")
    lines.append(f"| JAX backend / devices | {v.get('jax_backend', v.get('jax_error'))} / "
                 f"{', '.join(v.get('jax_devices', [])) or '-'} |")
    lines.append(f"| PyTorch CUDA device | {v.get('torch_cuda', v.get('torch_error'))} |")
    for name, version in v["packages"].items():
      lines.append(f"| {name} | {version or 'not installed'} |")
  else:
    lines.append("| versions | not recorded |")

  lines += ["", "## Steps", "", "| step | status | seconds | limit (s) |", "|---|---|---|---|"]
  lines += [f"| {name} | {s['status']} | {s['seconds']} | {s['limit']} |"
            for name, s in steps.items()]

  golden = _golden(scratch)
  lines += ["", "## Golden tests (JAX_DEFAULT_MATMUL_PRECISION=highest)", "",
            f"`{meta.get('golden_command', 'pytest')}`", "",
            "| tests | passed | failed | skipped | seconds |", "|---|---|---|---|---|"]
  if golden:
    lines.append(f"| golden tests | {golden['passed']} | {golden['failed']} | {golden['skipped']} | "
                 f"{golden['seconds']:.1f} |")
    if golden["failures"]:
      lines.append(f"\nFailed: {', '.join(golden['failures'])}")
  else:
    lines.append("| golden tests | - | - | - | - |")

  bench = meta.get("bench", {})
  lines += ["", f"## Throughput (images/s; batch {bench.get('batch_size', '?')}, "
            f"{bench.get('image_size', '?')}x{bench.get('image_size', '?')}, PyTorch on "
            f"{bench.get('device', '?')}, {bench.get('rounds', '?')} round(s), median)", "",
            "| model | PyTorch train | JAX train | train ratio | PyTorch inference | "
            "JAX inference | inference ratio |", "|---|---|---|---|---|---|---|"]
  for model in MODELS:
    path = scratch / f"bench_{model}.json"
    if path.exists():
      m = json.loads(path.read_text())["median"]
      cells = [_num(m.get("torch_train_images_per_sec")), _num(m.get("jax_train_images_per_sec")),
               _num(m.get("ratio_train_images_per_sec"), ".2f") + "x",
               _num(m.get("torch_inference_images_per_sec")),
               _num(m.get("jax_inference_images_per_sec")),
               _num(m.get("ratio_inference_images_per_sec"), ".2f") + "x"]
    else:
      cells = ["-"] * 6
    lines.append(f"| {model} | " + " | ".join(cells) + " |")

  path = scratch / "bench_seeds.json"
  if path.exists():
    b = json.loads(path.read_text())
    lines += ["", f"## Several seeds in one program ({b['model']}, train images/s, batch "
              f"{b['batch_size']}, {b['crop']}x{b['crop']}, {b['steps_per_dispatch']} step(s) a "
              f"dispatch, {b['rounds']} round(s), median)", "",
              "| seeds | per seed | all seeds | per seed vs 1 seed |", "|---|---|---|---|"]
    for n, per_seed in b["median_per_seed"].items():
      lines.append(f"| {n} | {_num(per_seed, '.1f')} | {_num(b['median_all_seeds'][n], '.1f')} "
                   f"| {_num(b['ratio_per_seed'][n], '.2f')}x |")

  lines += ["", "## Training on NUAA-SIRST 50_50 (test split, final evaluation)", "",
            "| model | epochs (run / planned) | wall time (s) | train images/s | IoU | nIoU | Pd | "
            "Fa (x1e-6) | best IoU (epoch) | status |", "|---|---|---|---|---|---|---|---|---|---|"]
  for model in MODELS:
    run, step = _run(scratch, model), steps.get(f"train_{model}", {})
    if run is None:
      lines.append(f"| {model} | - | - | - | - | - | - | - | - | {step.get('status', 'not run')} |")
      continue
    final, best = run["final"] or {}, run["best"]
    fa = final.get("Fa")
    lines.append(
        f"| {model} | {run['epoch'] or 0} / {run['planned'] or '?'} | {step.get('seconds', '-')} "
        f"| {_num(run['images_per_sec'], '.1f')} | {_num(final.get('IoU'), '.4f')} | "
        f"{_num(final.get('nIoU'), '.4f')} | {_num(final.get('Pd'), '.4f')} | "
        f"{_num(None if fa is None else fa * 1e6, '.2f')} | "
        f"{_num(best and best['IoU'], '.4f')} ({best['epoch'] if best else '-'}) | "
        f"{step.get('status', '?')} |")
  commands = meta.get("train_commands", {})
  if commands:
    lines += ["", "Commands (data, TFDS and workdirs in the suite's scratch folder):", ""]
    lines += [f"- {model}: `{cmd}`" for model, cmd in commands.items()]
  text = "\n".join(lines) + "\n"
  pathlib.Path(out).write_text(text)
  return text


def main(argv: list[str]) -> int:
  if len(argv) >= 3 and argv[1] == "versions" and len(argv) == 3:
    versions(argv[2])
  elif len(argv) >= 3 and argv[1] == "overrides":
    overrides(argv[2], argv[3:])
  elif len(argv) == 4 and argv[1] == "summary":
    print(summary(argv[2], argv[3]))
  else:
    print(__doc__, file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
