"""ONNX Runtime on the PyTorch reference's own ONNX export against ONNX Runtime on our graph
(ACM-U-Net, batch 8, 256x256, 2 threads, alternating rounds): tells how much of the
onnxruntime/pytorch ratio of benchmark_deploy.py is our graph rather than the runtime.

  python experiments/ort_graph_vs_torch_graph.py     # needs the extras onnx and torch

Writes /tmp/ortcmp/{torch,ours}.onnx. Results: experiments/results/benchmark_deploy.md.
"""
import os
os.makedirs("/tmp/ortcmp", exist_ok=True)
import sys, time, statistics
from pathlib import Path
_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE)); sys.path.insert(0, str(_HERE.parent))
import numpy as np, torch, onnxruntime as ort, jax, jax.numpy as jnp
from torch_reference import acm_unet
from irst_jax import models
from irst_jax.serving import onnx_export
import importlib
torch.set_num_threads(2)
m = acm_unet.ACMUNet(in_channels=1).eval()
x = np.random.default_rng(0).uniform(0, 255, (8, 256, 256, 1)).astype(np.float32)
xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
try:
  torch.onnx.export(m, (xt,), "/tmp/ortcmp/torch.onnx", opset_version=18, dynamo=False,
                    input_names=["images"], dynamic_axes={"images": {0: "b"}})
except Exception as e:
  print("legacy export failed:", repr(e)[:300]); 
  torch.onnx.export(m, (xt,), "/tmp/ortcmp/torch.onnx", opset_version=18, dynamo=True)
config = importlib.import_module("irst_jax.configs.acm_unet").get_config("nuaa_sirst")
model = models.create_model(config.model)
variables = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 1))))
fn = onnx_export.network(config, variables, mean=100.0, std=40.0)
onnx_export.to_onnx(fn, (256, 256), "/tmp/ortcmp/ours.onnx", name="acm_unet")
def sess(p):
  o = ort.SessionOptions(); o.intra_op_num_threads = 2
  o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  s = ort.InferenceSession(p, o, providers=["CPUExecutionProvider"])
  name = s.get_inputs()[0].name
  return s, name
st, nt = sess("/tmp/ortcmp/torch.onnx"); so, no = sess("/tmp/ortcmp/ours.onnx")
runs = {"ort_torch_graph": lambda: st.run(None, {nt: xt.numpy()}),
        "ort_our_graph": lambda: so.run(None, {no: x}),
        "pytorch": lambda: torch.inference_mode()(m)(xt)}
for f in runs.values(): f(); f()
rates = {k: [] for k in runs}
for r in range(9):
  for k in (list(runs)[r % 3:] + list(runs)[:r % 3]):
    t = time.perf_counter()
    for _ in range(3): runs[k]()
    rates[k].append(24 / (time.perf_counter() - t))
  print("round", r, {k: round(v[-1], 1) for k, v in rates.items()}, flush=True)
print("median", {k: round(statistics.median(v), 1) for k, v in rates.items()})
