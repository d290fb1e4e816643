"""ONNX Runtime on the PyTorch reference's own ONNX export against ONNX Runtime on our graph
(ACM-U-Net, batch 8, 256x256, 2 threads, alternating rounds): tells how much of the
onnxruntime/pytorch ratio of benchmark_deploy.py is our graph rather than the runtime.

  python experiments/ort_graph_vs_torch_graph.py     # needs the extras onnx and torch

Writes /tmp/ortcmp/{torch,ours}.onnx. Results: experiments/results/benchmark_deploy.md.
"""
from __future__ import annotations

import importlib
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch_reference import acm_unet  # noqa: E402

from irst_jax import models  # noqa: E402
from irst_jax.serving import onnx_export  # noqa: E402

OUT = Path("/tmp/ortcmp")


def session(path: Path) -> tuple[ort.InferenceSession, str]:
  options = ort.SessionOptions()
  options.intra_op_num_threads = 2
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
  return s, s.get_inputs()[0].name


def main() -> None:
  OUT.mkdir(parents=True, exist_ok=True)
  torch.set_num_threads(2)
  reference = acm_unet.ACMUNet(in_channels=1).eval()
  x = np.random.default_rng(0).uniform(0, 255, (8, 256, 256, 1)).astype(np.float32)
  x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  torch.onnx.export(reference, (x_nchw,), str(OUT / "torch.onnx"), opset_version=18,
                    dynamo=False, input_names=["images"], dynamic_axes={"images": {0: "b"}})
  config = importlib.import_module("irst_jax.configs.acm_unet").get_config("nuaa_sirst")
  model = models.create_model(config.model)
  variables = jax.tree_util.tree_map(
      np.asarray, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 1))))
  fn = onnx_export.network(config, variables, mean=100.0, std=40.0)
  onnx_export.to_onnx(fn, (256, 256), OUT / "ours.onnx", name="acm_unet")
  torch_graph, torch_input = session(OUT / "torch.onnx")
  our_graph, our_input = session(OUT / "ours.onnx")
  runs = {"ort_torch_graph": lambda: torch_graph.run(None, {torch_input: x_nchw.numpy()}),
          "ort_our_graph": lambda: our_graph.run(None, {our_input: x}),
          "pytorch": lambda: torch.inference_mode()(reference)(x_nchw)}
  for run in runs.values():
    run()
    run()
  rates = {k: [] for k in runs}
  names = list(runs)
  for r in range(9):
    for k in names[r % 3:] + names[:r % 3]:
      start = time.perf_counter()
      for _ in range(3):
        runs[k]()
      rates[k].append(24 / (time.perf_counter() - start))
    print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
  print("median images/s: " + ", ".join(f"{k} {statistics.median(v):.1f}"
                                        for k, v in rates.items()))


if __name__ == "__main__":
  main()
