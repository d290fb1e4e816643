"""PyTorch baseline of `benchmark.py`: train-step and inference images/s on this machine.

  python experiments/benchmark_torch.py --model=acm_unet --batch_size=8 --image_size=256
  python experiments/benchmark_torch.py --model=dnanet --steps=4 --warmup=1

Times our PyTorch writing of the reference networks (`torch_reference/`, equal to the golden
vectors) the way REFERENCE.md §5 measured them: random single-channel input, soft-IoU loss
(mean over the deep-supervision maps for DNA-Net), Adagrad, `torch.set_num_threads` =
all cores; inference in eval mode under `torch.inference_mode`. Numbers drift between
machines and loads, so compare a JAX/PyTorch ratio measured in one sitting
(`benchmark.py` right before or after this, or both interleaved step by step with
`benchmark_vs_torch.py --interleave`, which runs this with `--serve`). Needs the `torch` extra.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_steps import serve  # noqa: E402
from torch_reference import acm_unet, dnanet  # noqa: E402

_MODEL = flags.DEFINE_enum("model", "acm_unet", ["acm_unet", "dnanet"], "Reference network.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Batch size.")
_SIZE = flags.DEFINE_integer("image_size", 256, "Square input size (pixels).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count(), "torch.set_num_threads.")
_MODE = flags.DEFINE_enum("mode", "both", ["train", "infer", "both"], "What to time.")
_SERVE = flags.DEFINE_bool("serve", False, "After warm-up, time steps on request "
                           "(serve_steps).")

_MODELS = {"acm_unet": lambda: acm_unet.ACMUNet(in_channels=1),
           "dnanet": lambda: dnanet.DNANet(input_channels=1)}


def soft_iou_loss(logits: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
  """1 - (|P.M| + smooth) / (|P| + |M| - |P.M| + smooth), sums over the batch (REFERENCE.md §2)."""
  p = torch.sigmoid(logits)
  inter = (p * mask).sum()
  return 1 - (inter + smooth) / (p.sum() + mask.sum() - inter + smooth)


def _time(fn, steps: int, warmup: int) -> float:
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / steps


def main(argv):
  del argv
  torch.set_num_threads(_THREADS.value)
  torch.manual_seed(0)
  n, size = _BATCH.value, _SIZE.value
  model = _MODELS[_MODEL.value]()
  rng = np.random.default_rng(0)
  image = torch.from_numpy(rng.normal(size=(n, 1, size, size)).astype(np.float32))
  mask = torch.from_numpy((rng.random((n, 1, size, size)) > 0.999).astype(np.float32))
  result = {"model": _MODEL.value, "batch_size": n, "image_size": size,
            "threads": torch.get_num_threads(), "torch": torch.__version__}
  runs = {}
  if _MODE.value in ("train", "both"):
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def train_once():
      if not model.training:   # only when switching from inference (--serve)
        model.train()
      out = model(image)
      maps = out if isinstance(out, (list, tuple)) else [out]
      loss = sum(soft_iou_loss(m, mask) for m in maps) / len(maps)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    runs["train"] = train_once
  if _MODE.value in ("infer", "both"):

    def infer_once():
      if model.training:
        model.eval()
      with torch.inference_mode():
        model(image)
    runs["infer"] = infer_once
  if _SERVE.value:
    for run in runs.values():
      for _ in range(_WARMUP.value):
        run()
    serve(runs)
    return
  for mode, run in runs.items():
    key = "train_images_per_sec" if mode == "train" else "inference_images_per_sec"
    result[key] = n / _time(run, _STEPS.value, _WARMUP.value)
  result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
