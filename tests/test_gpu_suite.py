"""experiments/gpu_suite.sh: its smoke form end to end on the CPU (ACM-U-Net steps, tiny fake
NUAA-SIRST), its GPU commands as a dry run (both models), and its summary from hand-made
results of both models."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
_SUITE = _REPO / "experiments" / "gpu_suite.sh"
sys.path.insert(0, str(_REPO / "experiments"))
import gpu_suite_helpers  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and timeout")


def _run_suite(results, *args, timeout, **env):
  full_env = {**os.environ, "PYTHON": sys.executable, **env}
  return subprocess.run(["bash", str(_SUITE), str(results), *args], cwd=_REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _table_row(text: str, first_cell: str) -> list[str]:
  """The cells of the Markdown table row starting with `first_cell` (the first such row)."""
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if cells[0] == first_cell:
      return cells
  raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def _number(cell: str) -> float:
  assert re.fullmatch(r"[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?x?", cell), cell
  return float(cell.rstrip("x"))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch (extra torch)")
def test_smoke_suite_runs_acm_unet_steps_and_summarises_them(tmp_path, fake_nuaa_sirst):
  results, scratch = tmp_path / "results", tmp_path / "scratch"
  proc = _run_suite(results, "--smoke", timeout=300, IRST_DATA_DIR=str(fake_nuaa_sirst.parent),
                    GPU_SUITE_SCRATCH=str(scratch), GPU_SUITE_BUDGET_S="280",
                    GPU_SUITE_STEPS="versions,golden,prepare,bench_acm_unet,train_acm_unet")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert sorted(p.name for p in results.iterdir()) == ["details.tar.gz", "suite.log", "summary.md"]
  summary = (results / "summary.md").read_text()
  for step in ("versions", "golden", "prepare", "bench_acm_unet", "train_acm_unet"):
    assert _table_row(summary, step)[1] == "ok", summary
  assert _table_row(summary, "python")[1] == ".".join(map(str, sys.version_info[:3]))
  assert _table_row(summary, "JAX backend / devices")[1].startswith("cpu")
  golden = _table_row(summary, "golden tests")
  assert golden[2] == "0" and int(golden[1]) + int(golden[3]) == 1, golden   # passed or skipped

  bench = json.loads((scratch / "bench_acm_unet.json").read_text())
  (row,) = bench["rounds"]
  cells = _table_row(summary, "acm_unet")   # the throughput table comes first
  torch_train, jax_train, ratio = (_number(c) for c in cells[1:4])
  assert torch_train == pytest.approx(row["PyTorch"]["train_images_per_sec"], rel=1e-3)
  assert jax_train == pytest.approx(row["JAX"]["train_images_per_sec"], rel=1e-3)
  assert ratio == pytest.approx(jax_train / torch_train, rel=1e-3)   # of the printed, rounded cells
  assert all(_number(c) > 0 for c in cells[4:7])
  assert row["JAX"]["backend"] == "cpu" and row["PyTorch"]["device"] == "cpu"

  train = summary[summary.index("## Training"):]
  cells = _table_row(train, "acm_unet")
  assert cells[1] == "2 / 2" and cells[-1] == "ok", cells
  records = [json.loads(line) for line in
             (scratch / "runs" / "acm_unet" / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in records if r["split"] == "test"][-1]
  assert [_number(c) for c in cells[4:8]] == pytest.approx(
      [final["IoU"], final["nIoU"], final["Pd"], final["Fa"] * 1e6], abs=1e-2)
  assert cells[4] == f"{final['IoU']:.4f}"
  assert _number(cells[3]) > 0   # train images/s of epoch 2
  assert _table_row(train, "dnanet")[-1] == "not run"
  with tarfile.open(results / "details.tar.gz") as tar:
    names = tar.getnames()
  assert {"runs/acm_unet/metrics.jsonl", "golden.xml", "bench_acm_unet.json",
          "logs/train_acm_unet.log"} <= set(names)


def test_dry_run_prints_the_gpu_commands_with_existing_config_fields(tmp_path):
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  (wheels / "grain-0.0-py3-none-any.whl").write_bytes(b"")
  proc = _run_suite(tmp_path / "results", timeout=120, GPU_SUITE_DRY_RUN="1", WHEELS=str(wheels),
                    GPU_SUITE_SCRATCH=str(tmp_path / "scratch"), IRST_SHARED=str(tmp_path))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  log = (tmp_path / "results" / "suite.log").read_text()
  assert "has no field" not in log, log   # every override names a field the configs have
  commands = {m.group(1): (int(m.group(2)), m.group(3))
              for m in re.finditer(r"\] (\w+) \(limit (\d+)s\): (.*)", log)}
  assert list(commands) == ["install", "versions", "golden", "prepare", "bench_acm_unet",
                            "bench_dnanet", "bench_seeds", "train_acm_unet", "train_dnanet"]
  assert "--batch_size=16 --crop=256 --seeds=1,2,4" in commands["bench_seeds"][1]
  assert f"--target {tmp_path}/scratch/site {wheels}/grain-0.0-py3-none-any.whl" in (
      commands["install"][1])
  assert commands["golden"][1].startswith("env JAX_DEFAULT_MATMUL_PRECISION=highest")
  for test in ("test_acm.py", "test_dnanet.py", "test_shuffle_attention.py"):
    assert f"tests/{test}" in commands["golden"][1]
  for model in ("acm_unet", "dnanet"):
    cmd = commands[f"bench_{model}"][1]
    assert f"--model={model} --device=cuda --batch_size=16 --image_size=256" in cmd
  acm, dna = commands["train_acm_unet"][1], commands["train_dnanet"][1]
  assert "--config=configs/acm_unet.py:nuaa_sirst " in acm and "num_epochs" not in acm
  assert f"--config.dataset.manual_dir={tmp_path}/datasets/NUAA-SIRST" in acm
  assert "--config=configs/dnanet.py:nuaa_sirst " in dna
  assert "--config.train.num_epochs=100" in dna
  # Nothing has run, so each run's limit is its cap less what later steps keep; the run stops
  # itself (train.time_limit_minutes) a margin before it: 530 - 120 - 45 s and 530 - 40 s.
  assert 400 <= commands["train_acm_unet"][0] <= 410 and 500 <= commands["train_dnanet"][0] <= 530
  for cmd, (limit, _), margin in ((acm, commands["train_acm_unet"], 45),
                                  (dna, commands["train_dnanet"], 40)):
    minutes = float(re.search(r"time_limit_minutes=([0-9.]+)", cmd).group(1))
    assert minutes == pytest.approx((limit - margin) / 60, abs=0.006)
  assert _table_row((tmp_path / "results" / "summary.md").read_text(), "train_dnanet")[1] == (
      "dry run")


def _write_scratch(scratch: pathlib.Path):
  """Hand-made results of every step, both models (ACM-U-Net's run complete, DNA-Net's killed
  mid-write)."""
  (scratch / "logs").mkdir(parents=True)
  (scratch / "meta.json").write_text(json.dumps({
      "smoke": False, "budget_s": 530, "command": "experiments/gpu_suite.sh RESULTS_DIR",
      "bench": {"batch_size": 16, "image_size": 256, "device": "cuda", "rounds": 1}}))
  (scratch / "steps.tsv").write_text("versions\tok\t4\t60\ngolden\tok\t40\t120\n"
                                     "train_acm_unet\tok\t200\t300\n"
                                     "train_dnanet\ttimed out\t110\t110\n")
  (scratch / "nvidia_smi.csv").write_text("NVIDIA H100 80GB HBM3, 580.159.04, 81559 MiB\n")
  (scratch / "versions.json").write_text(json.dumps({
      "python": "3.12.3", "packages": {"jax": "0.11.2", "torch": None},
      "jax_backend": "gpu", "jax_devices": ["NVIDIA H100 80GB HBM3"], "torch_cuda": "H100"}))
  (scratch / "golden.xml").write_text(
      '<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="5" '
      'time="41.5"><testcase name="test_a"/><testcase name="test_b"><failure/></testcase>'
      '</testsuite></testsuites>')
  for model, (t_tr, j_tr, t_in, j_in) in {"acm_unet": (1000.0, 2500.0, 4000.0, 9000.0),
                                          "dnanet": (400.0, 300.0, 1200.0, 1500.0)}.items():
    (scratch / f"bench_{model}.json").write_text(json.dumps({"median": {
        "torch_train_images_per_sec": t_tr, "jax_train_images_per_sec": j_tr,
        "ratio_train_images_per_sec": j_tr / t_tr, "torch_inference_images_per_sec": t_in,
        "jax_inference_images_per_sec": j_in, "ratio_inference_images_per_sec": j_in / t_in}}))
  (scratch / "bench_seeds.json").write_text(json.dumps({
      "model": "acm_unet", "batch_size": 16, "crop": 256, "steps_per_dispatch": 16, "rounds": 5,
      "median_per_seed": {"1": 2000.0, "2": 1600.0}, "median_all_seeds": {"1": 2000.0, "2": 3200.0},
      "ratio_per_seed": {"1": 1.0, "2": 0.8}}))
  acm = scratch / "runs" / "acm_unet"
  acm.mkdir(parents=True)
  (acm / "config.json").write_text(json.dumps({"train": {"num_epochs": 400}}))
  rows = [{"split": "train", "epoch": 380, "step": 4940, "loss": 0.3},
          {"split": "test", "epoch": 380, "step": 4940, "IoU": 0.6973, "nIoU": 0.667, "Pd": 0.92,
           "Fa": 24.01e-6},
          {"split": "train", "epoch": 400, "step": 5200, "loss": 0.3},
          {"split": "test", "epoch": 400, "step": 5200, "IoU": 0.69481, "nIoU": 0.67149,
           "Pd": 0.91634, "Fa": 28.404e-6}]
  (acm / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (scratch / "logs" / "train_acm_unet.log").write_text(
      "final: IoU 0.6948\ntrain throughput: 2480.25 images/s\n")
  dna = scratch / "runs" / "dnanet"
  dna.mkdir(parents=True)
  (dna / "config.json").write_text(json.dumps({"train": {"num_epochs": 100}}))
  (dna / "metrics.jsonl").write_text(
      json.dumps({"split": "train", "epoch": 19, "step": 247, "images_per_sec": 0.0}) + "\n"
      + json.dumps({"split": "train", "epoch": 19, "step": 247, "images_per_sec": 310.0}) + "\n"
      + json.dumps({"split": "train", "epoch": 20, "step": 260, "images_per_sec": 290.0}) + "\n"
      + json.dumps({"split": "train", "epoch": 20, "step": 260, "images_per_sec": 330.0}) + "\n"
      + json.dumps({"split": "test", "epoch": 20, "step": 260, "IoU": 0.5, "nIoU": 0.4,
                    "Pd": 0.8, "Fa": 5e-5}) + "\n" + '{"split": "train", "epo')


def test_summary_tables_from_hand_made_results(tmp_path):
  _write_scratch(tmp_path / "scratch")
  text = gpu_suite_helpers.summary(str(tmp_path / "scratch"), str(tmp_path / "summary.md"))
  assert (tmp_path / "summary.md").read_text() == text
  assert _table_row(text, "nvidia-smi")[1] == "NVIDIA H100 80GB HBM3, 580.159.04, 81559 MiB"
  assert _table_row(text, "torch")[1] == "not installed"
  assert _table_row(text, "train_dnanet")[1:] == ["timed out", "110", "110"]
  assert _table_row(text, "golden tests")[1:] == ["3", "1", "1", "41.5"]
  assert "Failed: test_b" in text
  assert _table_row(text, "acm_unet")[1:] == ["1000", "2500", "2.50x", "4000", "9000", "2.25x"]
  assert _table_row(text, "dnanet")[1:] == ["400", "300", "0.75x", "1200", "1500", "1.25x"]
  seeds = text[text.index("## Several seeds"):]
  assert _table_row(seeds, "1")[1:] == ["2000.0", "2000.0", "1.00x"]
  assert _table_row(seeds, "2")[1:] == ["1600.0", "3200.0", "0.80x"]
  train = text[text.index("## Training"):]
  assert _table_row(train, "acm_unet")[1:] == [
      "400 / 400", "200", "2480.2", "0.6948", "0.6715", "0.9163", "28.40", "0.6973 (380)", "ok"]
  assert _table_row(train, "dnanet")[1:] == [
      "20 / 100", "110", "310.0", "0.5000", "0.4000", "0.8000", "50.00", "0.5000 (20)", "timed out"]
