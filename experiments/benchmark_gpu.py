"""JAX against PyTorch on one accelerator: train-step and inference images/s, fresh processes.

  python experiments/benchmark_gpu.py --model=acm_unet --device=cuda --batch_size=16 \
      --image_size=256 --steps=50 --warmup=5 --rounds=1 --out=bench_acm_unet.json
  python experiments/benchmark_gpu.py --model=dnanet --device=cpu --batch_size=2 --image_size=32 \
      --steps=1 --warmup=1 --jax_flag=--config.model.backbone=resnet10_light   # smoke sizes

`benchmark_torch.py` times PyTorch on the CPU only; this script times the same PyTorch networks
(`torch_reference/`, equal to the golden vectors; its soft-IoU loss and Adagrad step) on
`--device` (`cuda` or `cpu`), waiting for the device after the timed steps, and
`benchmark.py` (JAX, which already runs on whatever backend JAX finds) with the same batch,
size and step counts. Each round runs one PyTorch process (`--worker=torch`) and one JAX
process, one after the other (alternating which goes first), each timing `--steps` steps after
`--warmup` untimed ones (JAX: compilation included in the warm-up). Takes `benchmark_torch.py`'s
flags (--model, --batch_size, --image_size, --steps, --warmup, --mode, --threads) plus the
ones below. Prints a Markdown table and the median JAX / PyTorch ratios; `--out` writes them
as JSON ({"rounds": [...], "median": {...}}), which `gpu_suite.sh` summarises.

On CUDA, PyTorch runs with `torch.backends.cudnn.benchmark = True` (fixed shapes, as one trains
with it) and its default TF32 convolutions; JAX with its default matmul precision (TF32 on
Ampere and later), so both use the same arithmetic.
"""
from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
import time

from absl import app, flags

_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
import benchmark_torch  # noqa: E402  (defines --model, --batch_size, --image_size, --steps, ...)

_CONFIGS = {"acm_unet": "configs/acm_unet.py", "dnanet": "configs/dnanet.py"}
_KEYS = {"train": "train_images_per_sec", "infer": "inference_images_per_sec"}

_DEVICE = flags.DEFINE_string("device", "cuda", "PyTorch device: cuda, cuda:N or cpu.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Rounds of one PyTorch and one JAX process.")
_JAX_FLAGS = flags.DEFINE_multi_string("jax_flag", [], "Extra flag for benchmark.py, e.g. "
                                       "--config.model.num_blocks=1 (repeatable).")
_TIMEOUT = flags.DEFINE_float("timeout", 600.0, "Seconds each process may take.")
_OUT = flags.DEFINE_string("out", None, "JSON file written with every round and the medians.")
_WORKER = flags.DEFINE_enum("worker", None, ["torch"], "Internal: time PyTorch in this process "
                            "and print its JSON result.")

FLAGS = flags.FLAGS


def torch_throughput(model_name: str, n: int, size: int, steps: int, warmup: int, mode: str,
                     device: str) -> dict:
  """{'train_images_per_sec', 'inference_images_per_sec', ...} of the PyTorch reference network
  on random (n, 1, size, size) input on `device`, as `benchmark_torch.py` measures on CPU."""
  import torch

  torch.manual_seed(0)
  dev = torch.device(device)
  if dev.type == "cuda":
    torch.backends.cudnn.benchmark = True
  else:
    torch.set_num_threads(FLAGS.threads)
  sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
  model = benchmark_torch._MODELS[model_name]().to(dev)  # noqa: SLF001  (the same networks)
  import numpy as np
  rng = np.random.default_rng(0)
  image = torch.from_numpy(rng.normal(size=(n, 1, size, size)).astype(np.float32)).to(dev)
  mask = torch.from_numpy((rng.random((n, 1, size, size)) > 0.999).astype(np.float32)).to(dev)
  result = {"model": model_name, "batch_size": n, "image_size": size, "device": str(dev),
            "torch": torch.__version__}
  if dev.type == "cuda":
    result["device_name"] = torch.cuda.get_device_name(dev)
  runs = {}
  if mode in ("train", "both"):
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def train_once():
      if not model.training:
        model.train()
      out = model(image)
      maps = out if isinstance(out, (list, tuple)) else [out]
      loss = sum(benchmark_torch.soft_iou_loss(m, mask) for m in maps) / len(maps)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    runs["train"] = train_once
  if mode in ("infer", "both"):

    def infer_once():
      if model.training:
        model.eval()
      with torch.inference_mode():
        model(image)
    runs["infer"] = infer_once
  for name, run in runs.items():
    for _ in range(warmup):
      run()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
      run()
    sync()
    result[_KEYS[name]] = n * steps / (time.perf_counter() - start)
  if dev.type == "cuda":
    result["peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
  return result


def _run(cmd: list[str]) -> dict:
  """Runs one benchmark process and returns its JSON result (its last printed object)."""
  proc = subprocess.run(cmd, cwd=_HERE.parent, capture_output=True, text=True, check=False,
                        timeout=_TIMEOUT.value)
  sys.stderr.write(proc.stderr[-3000:])
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n"
                       f"{proc.stderr[-2000:]}")
  text = proc.stdout
  return json.loads(text[text.rindex("{\n"):])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  model, n, size = FLAGS.model, FLAGS.batch_size, FLAGS.image_size
  steps, warmup, mode = FLAGS.steps, FLAGS.warmup, FLAGS.mode
  if _WORKER.value == "torch":
    result = torch_throughput(model, n, size, steps, warmup, mode, _DEVICE.value)
    print(json.dumps(result, indent=2))
    return
  common = [f"--batch_size={n}", f"--image_size={size}", f"--steps={steps}",
            f"--warmup={warmup}", f"--mode={mode}"]
  cmds = {"PyTorch": [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker=torch",
                      f"--model={model}", f"--device={_DEVICE.value}",
                      f"--threads={FLAGS.threads}", *common],
          "JAX": [sys.executable, str(_HERE / "benchmark.py"), f"--config={_CONFIGS[model]}",
                  *common, *_JAX_FLAGS.value]}
  keys = [k for m, k in _KEYS.items() if mode in ("both", m)]
  print(f"{model}, batch {n}, {size}x{size}, PyTorch on {_DEVICE.value}, {steps} timed steps "
        f"after {warmup}; images/s\n\n| round | " + " | ".join(
            f"PyTorch {k.split('_')[0]} | JAX {k.split('_')[0]} | ratio" for k in keys)
        + " |\n|---|" + "---|---|---|" * len(keys), flush=True)
  rounds = []
  for r in range(_ROUNDS.value):
    order = ("PyTorch", "JAX") if r % 2 == 0 else ("JAX", "PyTorch")
    row = {name: _run(cmds[name]) for name in order}
    rounds.append(row)
    print(f"| {r + 1} | " + " | ".join(
        f"{row['PyTorch'][k]:.4g} | {row['JAX'][k]:.4g} | {row['JAX'][k] / row['PyTorch'][k]:.2f}x"
        for k in keys) + " |", flush=True)
  median = {}
  for k in keys:
    median[f"torch_{k}"] = statistics.median(row["PyTorch"][k] for row in rounds)
    median[f"jax_{k}"] = statistics.median(row["JAX"][k] for row in rounds)
    median[f"ratio_{k}"] = statistics.median(row["JAX"][k] / row["PyTorch"][k] for row in rounds)
  print("\nMedian JAX / PyTorch ratio: " + ", ".join(
      f"{k.split('_')[0]} {median[f'ratio_{k}']:.2f}x" for k in keys))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(
        {"model": model, "batch_size": n, "image_size": size, "device": _DEVICE.value,
         "steps": steps, "warmup": warmup, "jax_flags": _JAX_FLAGS.value, "rounds": rounds,
         "median": median}, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
