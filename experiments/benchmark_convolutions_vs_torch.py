"""Each convolution shape of a network, JAX against PyTorch: forward, input and weight gradient.

  python experiments/benchmark_convolutions_vs_torch.py --config=configs/acm_unet.py

Traces the network's training forward pass (batch `--batch_size`, `--image_size` squared) and
collects its convolutions as the layers call them (before `irst_jax/cpu/convolution.py`
rewrites them: the forms an accelerator runs). For each distinct shape, times in one
process, one after the other and `--rounds` times: the JAX forward pass, input gradient and
weight gradient, each jitted alone with `cpu_convolution.conv_general_dilated` (so with the CPU
forms that the network runs), and PyTorch's `aten.convolution` and `aten.convolution_backward`
on the same shapes. Prints each shape's medians (ms) and their sums weighted by how often the
network uses the shape: one step's worth of convolutions. Needs PyTorch (CPU).
"""
from __future__ import annotations

import collections
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from irst_jax import models, platform_settings  # noqa: E402
from irst_jax.cpu import convolution as cpu_convolution  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Batch size.")
_SIZE = flags.DEFINE_integer("image_size", 256, "Square input size (pixels).")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Rounds; each times every pass of a shape in turn.")
_CALLS = flags.DEFINE_integer("calls", 4, "Calls per timing.")
_NHWC = ("NHWC", "HWIO", "NHWC")


def network_convolutions(config, n: int, size: int) -> collections.Counter:
  """Counter of (input shape, kernel shape, strides, padding) over the convolutions of one
  training forward pass. Raises ValueError for a convolution this script cannot time in
  PyTorch (dilation, groups, asymmetric padding)."""
  model = models.create_model(config.model)
  x = jnp.zeros((n, size, size, config.model.in_channels), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))

  def forward(v, x, rng):
    return model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
  equations = cpu_convolution.convolution_equations(   # the layers' own, plain convolutions
      forward, variables, x, jax.random.PRNGKey(0), platform="cuda")
  found = collections.Counter()
  for e in equations:
    p = e.params
    if (any(d != 1 for d in (*p["lhs_dilation"], *p["rhs_dilation"]))
        or p["feature_group_count"] != 1 or any(a != b for a, b in p["padding"])):
      raise ValueError(f"convolution not timed by this script: {p}")
    found[(e.invars[0].aval.shape, e.invars[1].aval.shape, tuple(p["window_strides"]),
           tuple(a for a, _ in p["padding"]))] += 1
  return found


def _timed(fn) -> float:
  start = time.perf_counter()
  for _ in range(_CALLS.value):
    fn()
  return (time.perf_counter() - start) / _CALLS.value * 1e3


def _passes(lhs_shape, rhs_shape, strides, padding) -> dict:
  """{name: no-argument function} for the six passes of one shape."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=lhs_shape).astype(np.float32)
  k = (rng.normal(size=rhs_shape) * 0.1).astype(np.float32)
  pads = [(p, p) for p in padding]

  def conv(x, k):
    return cpu_convolution.conv_general_dilated(x, k, strides, pads, dimension_numbers=_NHWC)
  jx, jk = jnp.asarray(x), jnp.asarray(k)
  g = jnp.ones(jax.eval_shape(conv, jx, jk).shape, jnp.float32)
  forward = jax.jit(conv)
  input_gradient = jax.jit(lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0])
  weight_gradient = jax.jit(lambda x, k, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0])
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  tk = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
  tg = torch.ones(g.shape[0], g.shape[3], g.shape[1], g.shape[2])
  args = (list(strides), list(padding), [1, 1], False, [0, 0], 1)
  return {
      "JAX forward": lambda: forward(jx, jk).block_until_ready(),
      "PyTorch forward": lambda: torch.ops.aten.convolution(tx, tk, None, *args),
      "JAX input gradient": lambda: input_gradient(jx, jk, g).block_until_ready(),
      "PyTorch input gradient": lambda: torch.ops.aten.convolution_backward(
          tg, tx, tk, None, *args, [True, False, False]),
      "JAX weight gradient": lambda: weight_gradient(jx, jk, g).block_until_ready(),
      "PyTorch weight gradient": lambda: torch.ops.aten.convolution_backward(
          tg, tx, tk, None, *args, [False, True, False]),
  }


def main(argv):
  del argv
  torch.set_num_threads(os.cpu_count())
  shapes = network_convolutions(_CONFIG.value, _BATCH.value, _SIZE.value)
  totals = collections.Counter()
  print(f"{_CONFIG.value.model.name}, batch {_BATCH.value}, {_SIZE.value}x{_SIZE.value}: "
        f"{sum(shapes.values())} convolutions, {len(shapes)} shapes; medians of {_ROUNDS.value} "
        f"rounds, ms (JAX / PyTorch)\n")
  print("| input | kernel | stride | count | forward | input gradient | weight gradient |")
  print("|---|---|---|---|---|---|---|")
  for (lhs, rhs, strides, padding), count in shapes.items():
    passes = _passes(lhs, rhs, strides, padding)
    for fn in passes.values():   # compiles and warms up
      fn()
    times = {name: [] for name in passes}
    for _ in range(_ROUNDS.value):
      for name, fn in passes.items():
        times[name].append(_timed(fn))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, value in median.items():
      totals[name] += value * count
    cells = [f"{median['JAX ' + p]:.2f} / {median['PyTorch ' + p]:.2f}"
             for p in ("forward", "input gradient", "weight gradient")]
    print(f"| {lhs} | {rhs} | {strides[0]} | {count} | " + " | ".join(cells) + " |", flush=True)
  print("\nOne step's worth (shape medians x count), ms: " + ", ".join(
      f"{p} JAX {totals['JAX ' + p]:.1f} / PyTorch {totals['PyTorch ' + p]:.1f}"
      for p in ("forward", "input gradient", "weight gradient")))


if __name__ == "__main__":
  platform_settings.apply(malloc=True, huge_pages=True)   # as irst_jax.main does
  flags.mark_flag_as_required("config")
  app.run(main)
