"""Deployment runtimes on this machine, in one process: ONNX Runtime on our model.onnx, PyTorch
eager on the reference network, and our jax.export module; inference images/s.

  python experiments/benchmark_deploy.py --model=acm_unet --rounds=15
  python experiments/benchmark_deploy.py --model=dnanet --rounds=7 --steps=1
  python experiments/benchmark_deploy.py --optimized_model=/tmp/acm_ort.onnx --profile

Same network and input for all three: the config's model (`configs/<model>.py`, random
weights; ``irst_jax.serving.onnx_export.network``: normalisation + network, the function the
ONNX graph holds), batch --batch_size of --image_size^2 single-channel images, inference mode.

- onnxruntime: the graph written by ``onnx_export.to_onnx`` (jax2onnx; symbolic batch, fixed
  side), CPUExecutionProvider, all graph optimisations, intra-op threads = cores.
- pytorch: ``experiments/torch_reference/`` (ACM-U-Net = BasicIRSTD's ASKCResUNet, DNA-Net =
  the official model), eval mode, ``torch.inference_mode``, NCHW, threads = cores.
- jax.export: ``jax.export`` of the same function for CPU (serialised and deserialised, then
  jitted: what an artifact runs; the network alone, without the artifact's labelling), with the
  XLA CPU flags of the command-line tools.

The machine is shared, so the runtimes are timed in alternating rounds (each round runs
--steps batches of each, in a rotating order, right after one another) and the medians over
rounds are reported, with the median of the per-round ONNX Runtime / PyTorch ratios on the
last line. Needs the extras onnx and torch. Results: experiments/results/benchmark_deploy.md.
"""
from __future__ import annotations

import collections
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent))

from irst_jax import platform_settings  # noqa: E402

platform_settings.apply()   # the XLA CPU flags of irst_jax's commands, before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from irst_jax import models  # noqa: E402
from irst_jax.serving import onnx_export  # noqa: E402

_MODEL = flags.DEFINE_enum("model", "acm_unet", ["acm_unet", "dnanet"], "Network.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Batch size.")
_SIZE = flags.DEFINE_integer("image_size", 256, "Square input side (pixels).")
_ROUNDS = flags.DEFINE_integer("rounds", 15, "Alternating rounds.")
_STEPS = flags.DEFINE_integer("steps", 3, "Batches per runtime per round.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed batches per runtime.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count(), "Threads of ORT and PyTorch.")
_OPTIMIZED = flags.DEFINE_string("optimized_model", None, "Write ORT's optimised graph here "
                                 "(SessionOptions.optimized_model_filepath).")
_PROFILE = flags.DEFINE_bool("profile", False, "Print ORT's per-operator time (its profiler).")
_RUNTIMES = flags.DEFINE_list("runtimes", ["onnxruntime", "pytorch", "jax.export"],
                              "Runtimes to time.")


def _torch_runner(name: str, x: np.ndarray):
  import torch
  from torch_reference import acm_unet, dnanet
  torch.set_num_threads(_THREADS.value)
  torch.manual_seed(0)
  model = (acm_unet.ACMUNet(in_channels=1) if name == "acm_unet"
           else dnanet.DNANet(input_channels=1)).eval()
  image = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

  def run():
    with torch.inference_mode():
      model(image)
  return run, f"torch {torch.__version__}"


def _ort_runner(path: Path, x: np.ndarray):
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.intra_op_num_threads = _THREADS.value
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  if _OPTIMIZED.value:
    options.optimized_model_filepath = _OPTIMIZED.value
  if _PROFILE.value:
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "benchmark_deploy_ort")
  session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
  feed = {onnx_export.INPUT_NAME: x}
  return (lambda: session.run(None, feed)), session, f"onnxruntime {ort.__version__}"


def _jax_runner(fn, x: np.ndarray):
  exported = jax.export.export(jax.jit(fn), platforms=("cpu",))(
      jax.ShapeDtypeStruct(x.shape, jnp.float32))
  call = jax.jit(jax.export.deserialize(exported.serialize()).call)
  device_x = jax.device_put(x)
  return (lambda: call(device_x).block_until_ready()), f"jax {jax.__version__}"


def _graph_summary(path: Path) -> str:
  import onnx
  ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
  return ", ".join(f"{k} {v}" for k, v in ops.most_common(8))


def _print_profile(session) -> None:
  import json
  events = json.loads(Path(session.end_profiling()).read_text())
  by_op = collections.Counter()
  for e in events:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
      by_op[e.get("args", {}).get("op_name", "?")] += e["dur"]
  total = sum(by_op.values())
  print("ORT profile (share of kernel time):")
  for op, us in by_op.most_common(10):
    print(f"  {op:24s} {100 * us / total:5.1f} %")


def main(argv):
  del argv
  config = importlib.import_module(f"irst_jax.configs.{_MODEL.value}").get_config("nuaa_sirst")
  model = models.create_model(config.model)
  n, size = _BATCH.value, _SIZE.value
  variables = jax.tree_util.tree_map(np.asarray, model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, int(config.model.in_channels)))))
  fn = onnx_export.network(config, variables, mean=100.0, std=40.0)
  x = np.random.default_rng(0).uniform(0, 255, (n, size, size, 1)).astype(np.float32)
  runners, versions = {}, []
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "model.onnx"
    start = time.perf_counter()
    onnx_export.to_onnx(fn, (size, size), path, name=_MODEL.value)
    print(f"jax2onnx conversion: {time.perf_counter() - start:.1f} s; graph: {_graph_summary(path)}")
    session = None
    if "onnxruntime" in _RUNTIMES.value:
      runners["onnxruntime"], session, v = _ort_runner(path, x)
      versions.append(v)
      if _OPTIMIZED.value:
        print(f"ORT optimised graph ({_OPTIMIZED.value}): {_graph_summary(Path(_OPTIMIZED.value))}")
    if "pytorch" in _RUNTIMES.value:
      runners["pytorch"], v = _torch_runner(_MODEL.value, x)
      versions.append(v)
    if "jax.export" in _RUNTIMES.value:
      runners["jax.export"], v = _jax_runner(fn, x)
      versions.append(v)
    print(f"{_MODEL.value}, batch {n}, {size}x{size}, {_THREADS.value} threads; "
          + ", ".join(versions))
    for run in runners.values():
      for _ in range(_WARMUP.value):
        run()
    rates = {k: [] for k in runners}
    names = list(runners)
    for r in range(_ROUNDS.value):
      order = names[r % len(names):] + names[:r % len(names)]
      for k in order:
        start = time.perf_counter()
        for _ in range(_STEPS.value):
          runners[k]()
        rates[k].append(n * _STEPS.value / (time.perf_counter() - start))
      print(f"round {r + 1}: " + ", ".join(f"{k} {rates[k][-1]:.1f}" for k in names), flush=True)
    if _PROFILE.value and session is not None:
      _print_profile(session)
  print("median images/s: " + ", ".join(f"{k} {statistics.median(v):.1f}"
                                        for k, v in rates.items()))
  if "jax.export" in rates and "pytorch" in rates:
    ratio = statistics.median(a / b for a, b in zip(rates["jax.export"], rates["pytorch"]))
    print(f"jax.export/pytorch inference ratio: {ratio:.2f}")
  if "onnxruntime" in rates and "pytorch" in rates:
    ratio = statistics.median(a / b for a, b in zip(rates["onnxruntime"], rates["pytorch"]))
    print(f"onnxruntime/pytorch inference ratio: {ratio:.2f}")


if __name__ == "__main__":
  app.run(main)
