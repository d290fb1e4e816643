"""Profile a model: parameters, multiply-adds and FLOPs, peak memory, latency.

  python -m irst_jax.profile --config=configs/acm_unet.py [--image_size=256] [--runs=20]
  python -m irst_jax.profile --all [--image_size=256]     # markdown table of every config

For the model of a config (built by ``irst_jax.models.create_model(config.model)``) on grey
images of ``image_size`` x ``image_size`` pixels:

- parameters: the number of scalars in ``params`` (``models.layers.count_params``; BatchNorm
  running statistics are not parameters).
- FLOPs per image: XLA's cost analysis (``jax.jit(f).lower(...).compile().cost_analysis()
  ['flops']``) of the inference program (``train=False``) at batch 1, traced with the plain
  ``lax.conv_general_dilated`` (as on GPU) rather than the CPU forms of
  :mod:`irst_jax.cpu`, which pad some kernels. XLA counts a multiply-add as
  2 FLOPs, elementwise operations (BatchNorm, activations, attention products) as 1 each, and
  only the taps of a convolution that fall inside the input (not those on zero padding).
- multiply-adds per image: FLOPs / 2. The "FLOPs" of the papers' tables (counted with thop or
  ptflops) are multiply-adds of the convolutions and linear layers, so compare them with this
  column; thop also counts the taps on zero padding, so its numbers are slightly higher.
- peak memory: ``compiled.memory_analysis()`` of the compiled program on the current device:
  arguments + outputs + temporaries - aliased (donated) buffers. Inference at batch 1; the
  train step at the config's ``train.batch_size`` on ``image_size`` crops: forward, loss
  (``config.train.loss`` from ``irst_jax.losses``), gradients and an Adam update, the state
  donated as in training (a minimal step written here, not the training loop's).
- latency: median wall time of ``--runs`` inference calls at batch 1 (after 3 warm-up calls),
  on the current device (``jax.devices()[0]``), input already on the device.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import pathlib
import statistics
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from irst_jax import cpu, losses, models
from irst_jax.models import layers

#: The packaged configs profiled by --all, in the README's order.
ALL_CONFIGS = ("acm_unet", "acm_fpn", "eaau_net", "daea", "dnanet", "cgranet")
MIB = 1 << 20


@dataclasses.dataclass
class Profile:
  """The numbers of :func:`profile` (bytes, seconds, counts per image)."""

  name: str
  image_size: int
  parameters: int
  flops: float
  train_batch: int
  inference_bytes: Optional[int]
  train_bytes: Optional[int]
  latency_s: float
  runs: int
  device: str

  @property
  def multiply_adds(self) -> float:
    return self.flops / 2


def config_file(name: str) -> pathlib.Path:
  """The file of a packaged config by name: ``irst_jax/configs/<name>.py`` or, in a checkout,
  ``configs/<name>.py``.

  Raises:
    FileNotFoundError: neither exists.
  """
  package = pathlib.Path(__file__).resolve().parents[1]
  for path in (package / "configs" / f"{name}.py", package.parent / "configs" / f"{name}.py"):
    if path.is_file():
      return path
  raise FileNotFoundError(f"no config {name}.py in {package / 'configs'} or "
                          f"{package.parent / 'configs'}")


def load_config(path: str | pathlib.Path, arg: Optional[str] = None
                ) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file."""
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"_irst_jax_profile_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@contextlib.contextmanager
def plain_convolutions():
  """Traces the plain forms of the layers (`irst_jax.cpu.plain_forms`), as on a GPU: the
  network's own operations (for counting FLOPs), not the CPU forms."""
  with cpu.plain_forms():
    yield


def cost(fn: Callable, *args) -> dict[str, float]:
  """XLA's cost analysis of the compiled ``jax.jit(fn)(*args)`` ('flops', 'bytes accessed',
  ...); `args` may be ``jax.ShapeDtypeStruct``."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):   # older jax: one dict per program
    analysis = analysis[0]
  return dict(analysis)


def flops(fn: Callable, *args) -> float:
  """FLOPs of ``fn(*args)`` from XLA's cost analysis (a multiply-add is 2)."""
  return float(cost(fn, *args).get("flops", 0.0))


def peak_bytes(compiled) -> Optional[int]:
  """Arguments + outputs + temporaries - aliased bytes of a compiled program (None when the
  backend gives no memory analysis)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def profile(config: ml_collections.ConfigDict, image_size: int = 256, runs: int = 20,
            train_batch: Optional[int] = None, name: Optional[str] = None,
            measure_train: bool = True) -> Profile:
  """Profiles the model of `config` on grey images of image_size x image_size (module
  docstring). `train_batch`: batch of the train step (default ``config.train.batch_size``).

  Raises:
    ValueError: image_size not a positive multiple of 32, runs < 1, an unknown model.
  """
  if image_size < 32 or image_size % 32:
    raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}")
  if runs < 1:
    raise ValueError(f"runs must be at least 1, got {runs}")
  model = models.create_model(config.model)
  channels = int(config.model.in_channels)
  train_batch = int(train_batch or config.train.batch_size)
  image = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                             jnp.zeros((1, 32, 32, channels), jnp.float32))
  parameters = layers.count_params(variables["params"])

  def infer(variables, x):
    return models.final_logits(model.apply(variables, x, train=False))

  with plain_convolutions():
    total_flops = flops(infer, variables, image)

  compiled = jax.jit(infer).lower(variables, image).compile()
  inference_bytes = peak_bytes(compiled)
  real = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
  x = jax.random.uniform(jax.random.PRNGKey(1), image.shape, jnp.float32)
  for _ in range(3):
    jax.block_until_ready(compiled(real, x))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(compiled(real, x))
    times.append(time.perf_counter() - start)

  train_bytes = None
  if measure_train:
    loss_fn = losses.get_loss(config.train.loss)
    tx = optax.adam(1e-3)

    def train_step(state, images, masks, rng):
      params, batch_stats, opt_state = state

      def loss(params):
        outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                       train=True, mutable=["batch_stats"],
                                       rngs={"dropout": rng})
        return loss_fn(outputs, masks), updates

      (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(params)
      steps, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, steps), updates.get("batch_stats", batch_stats),
              opt_state), value

    params = variables["params"]
    state = (params, variables.get("batch_stats", {}), jax.eval_shape(tx.init, params))
    batch = jax.ShapeDtypeStruct((train_batch, image_size, image_size, channels), jnp.float32)
    masks = jax.ShapeDtypeStruct((train_batch, image_size, image_size, 1), jnp.float32)
    train_bytes = peak_bytes(jax.jit(train_step, donate_argnums=(0,)).lower(
        state, batch, masks, jax.ShapeDtypeStruct((2,), jnp.uint32)).compile())
  device = jax.devices()[0]
  return Profile(name=name or config.model.name, image_size=image_size, parameters=parameters,
                 flops=total_flops, train_batch=train_batch, inference_bytes=inference_bytes,
                 train_bytes=train_bytes, latency_s=statistics.median(times), runs=runs,
                 device=f"{device.platform} ({getattr(device, 'device_kind', device.platform)})")


def _mib(value: Optional[int]) -> str:
  return "n/a" if value is None else f"{value / MIB:.1f}"


def report(p: Profile) -> str:
  """The lines printed for one model."""
  return "\n".join([
      f"model: {p.name}, grey input 1x{p.image_size}x{p.image_size}, device {p.device}",
      f"parameters: {p.parameters:,}",
      f"multiply-adds per image: {p.multiply_adds / 1e9:.4f} G  (FLOPs / 2: what papers "
      "report as thop-style \"FLOPs\")",
      f"FLOPs per image: {p.flops / 1e9:.4f} G  (XLA cost analysis of the inference program)",
      f"peak memory, inference (batch 1): {_mib(p.inference_bytes)} MiB",
      f"peak memory, train step (batch {p.train_batch}, forward + backward + Adam): "
      f"{_mib(p.train_bytes)} MiB",
      f"latency, inference (batch 1): {p.latency_s * 1e3:.2f} ms (median of {p.runs} runs "
      "after 3 warm-up runs)"])


def table(profiles: list[Profile]) -> str:
  """A markdown table of several profiles."""
  first = profiles[0]
  lines = [f"Grey {first.image_size}x{first.image_size} input; device {first.device}; "
           f"latency: median of {first.runs} runs at batch 1.", "",
           "| model | parameters | multiply-adds (G) | FLOPs (G) | inference memory (MiB) "
           "| train step memory (MiB, batch) | latency (ms) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for p in profiles:
    lines.append(f"| {p.name} | {p.parameters:,} | {p.multiply_adds / 1e9:.3f} | "
                 f"{p.flops / 1e9:.3f} | {_mib(p.inference_bytes)} | "
                 f"{_mib(p.train_bytes)} ({p.train_batch}) | {p.latency_s * 1e3:.2f} |")
  return "\n".join(lines)


def define_flags() -> None:
  """The command's flags (defined only when run as a command)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/acm_unet.py.")
  flags.DEFINE_bool("all", False, f"Profile every packaged config ({', '.join(ALL_CONFIGS)}) "
                    "and print a markdown table.")
  flags.DEFINE_integer("image_size", 256, "Side of the square grey input (a multiple of 32).")
  flags.DEFINE_integer("runs", 20, "Timed inference runs (after 3 warm-up runs).")
  flags.DEFINE_integer("train_batch", None, "Batch of the train step (default: the config's).")
  flags.DEFINE_bool("train", True, "Also compile the train step for its peak memory.")


def main(argv) -> None:
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.all == (f.config is not None):
    raise app.UsageError("give either --config=FILE or --all")
  kwargs = dict(image_size=f.image_size, runs=f.runs, train_batch=f.train_batch,
                measure_train=f.train)
  if f.all:
    profiles = []
    for name in ALL_CONFIGS:
      profiles.append(profile(load_config(config_file(name)), name=name, **kwargs))
      print(report(profiles[-1]), flush=True)
      print(flush=True)
    print(table(profiles))
  else:
    print(report(profile(f.config, **kwargs)))


if __name__ == "__main__":
  from irst_jax import errors, platform_settings
  platform_settings.apply()   # XLA CPU flags, on CPU only, before JAX starts
  define_flags()
  errors.run_main(main)
