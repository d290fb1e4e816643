"""Training loop against the bare train step: does the loop keep the device busy?

  python experiments/benchmark_input.py --config=configs/acm_unet.py --crop=256 --batch=16

Measures, in one process, on the config's training split (NUAA-SIRST 50_50 by default):

- loop: `train.train_and_evaluate` for `--epochs` + 1 epochs in a temporary workdir (data on
  the device, `steps_per_dispatch` steps a dispatch, an asynchronous checkpoint every epoch,
  logging); the images/s of epochs 2 .. epochs + 1 from the wall-clock times at which their
  train rows are logged (epoch 1 compiles; the final evaluation comes after the last row);
- step: the bare compiled train step (`train.make_train_step`) on one fixed batch of the same
  size already on the device, as many steps as the timed epochs, half of them before and half
  after the loop (the machine may be shared: this averages slow drifts);
- augmentation: the on-device draw (permutation, crop, flips, normalisation;
  `device_data.draw_batch`) of the same batches alone.

Prints one line per measurement and last `loop/step throughput ratio: X`. `--config.*` flags
override the config (e.g. a smaller model); `--crop` / `--batch` set dataset.crop_size and
train.batch_size.
"""
from __future__ import annotations

import pathlib
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from irst_jax import models, optim, train  # noqa: E402
from irst_jax.data import device_data  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", "configs/acm_unet.py", "Config file.",
                                         lock_config=False)
CROP = flags.DEFINE_integer("crop", 256, "dataset.crop_size (pixels).")
BATCH = flags.DEFINE_integer("batch", 16, "train.batch_size (global).")
EPOCHS = flags.DEFINE_integer("epochs", 5, "Timed epochs (after one compiling epoch).")


def _timed_loop(config, steps_per_epoch: int) -> float:
  """Images/s of epochs 2 .. N of `train_and_evaluate`."""
  times: dict[int, float] = {}
  write = train.RunLogger.write

  def timed_write(self, split, step, epoch, values):
    if split == "train":
      times[epoch] = time.perf_counter()
    return write(self, split, step, epoch, values)

  train.RunLogger.write = timed_write
  try:
    with tempfile.TemporaryDirectory(prefix="benchmark_input_") as workdir:
      train.train_and_evaluate(config, workdir)
  finally:
    train.RunLogger.write = write
  last = config.train.num_epochs
  images = (last - 1) * steps_per_epoch * config.train.batch_size
  return images / (times[last] - times[1])


def _step_rate(config, batch: dict, steps: int) -> float:
  model = models.create_model(config.model, axis_name=train.AXIS)
  tx, schedule = optim.create_optimizer(config.optim, 100, config.train.num_epochs)
  crop = config.dataset.crop_size
  state = train.replicate(train.create_train_state(model, config, tx,
                                                   (1, crop, crop, config.model.in_channels)))
  step = train.make_train_step(model, config.train.loss, schedule)
  state, metrics = step(state, batch)   # compiles
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return steps * config.train.batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  config = CONFIG.value
  config.dataset.crop_size = CROP.value
  config.train.batch_size = BATCH.value
  config.train.num_epochs = EPOCHS.value + 1
  config.train.eval_every_epochs = EPOCHS.value + 10   # only the final evaluation (untimed)
  config.dataset.eval_network_padding = "canvas"
  devices = jax.local_device_count()
  data, settings = device_data.load_train_data(config.dataset)
  steps = EPOCHS.value * device_data.steps_per_epoch(data.num_examples, BATCH.value)
  print(f"{config.model.name} crop {CROP.value} batch {BATCH.value} on {devices} "
        f"{jax.default_backend()} device(s), {data.num_examples} training images, "
        f"steps_per_dispatch {train.steps_per_dispatch(config.train, steps // EPOCHS.value)}",
        flush=True)

  # augmentation alone, on the device (one device's share per step, as in the training step)
  draw = jax.jit(device_data.draw_batch, static_argnames=("settings", "global_batch"))
  arrays = jax.tree_util.tree_map(jax.numpy.asarray, data.arrays())
  key = device_data.data_key(0)
  positions = jax.numpy.arange(BATCH.value, dtype=jax.numpy.int32)
  per_epoch = steps // EPOCHS.value
  batch = draw(arrays, key, 0, 0, positions, settings=settings, global_batch=BATCH.value)
  jax.block_until_ready(batch)
  start = time.perf_counter()
  for s in range(steps):
    out = draw(arrays, key, s // per_epoch, s % per_epoch, positions, settings=settings,
               global_batch=BATCH.value)
  jax.block_until_ready(out)
  augment_rate = steps * BATCH.value / (time.perf_counter() - start)
  print(f"on-device augmentation alone: {augment_rate:.1f} images/s", flush=True)

  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(jax.local_devices()), (train.AXIS,)),
      jax.sharding.PartitionSpec(train.AXIS))
  fixed = {k: jax.device_put(np.asarray(batch[k]).reshape((devices, -1) + batch[k].shape[1:]),
                             sharding) for k in ("image", "mask")}
  first, second = (steps + 1) // 2, steps // 2
  before = _step_rate(config, fixed, first)
  print(f"bare step (before the loop): {before:.2f} images/s", flush=True)
  loop = _timed_loop(config, per_epoch)
  print(f"training loop, {EPOCHS.value} epochs of {per_epoch} steps: {loop:.2f} images/s",
        flush=True)
  after = _step_rate(config, fixed, second)
  print(f"bare step (after the loop): {after:.2f} images/s", flush=True)
  step_rate = steps / (first / before + second / after)   # images over the time of both
  print(f"bare step: {step_rate:.2f} images/s")
  print(f"loop/step throughput ratio: {loop / step_rate:.3f}")


if __name__ == "__main__":
  app.run(main)
