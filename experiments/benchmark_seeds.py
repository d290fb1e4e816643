"""Training images/s per seed with train.num_seeds = 1, 2, 4 replicas in one program.

  python experiments/benchmark_seeds.py [--config=configs/acm_unet.py] [--batch_size=8]
      [--crop=256] [--seeds=1,2,4] [--rounds=5] [--dispatches=3] [--out=FILE.json]
      [--seed_batching=auto|vmap|unrolled|both]

The training program of a run (`train.make_train_chunk`: examples drawn and augmented on the
device, `train.steps_per_dispatch` steps a dispatch, automatic by backend unless
--steps_per_dispatch), on a synthetic training split of 256 grey images of crop x crop pixels
with a few target pixels each, for each replica count N of --seeds. Each N is compiled and
warmed up once (one untimed dispatch); then every round times `--dispatches` dispatches of each
N in turn (alternating, so that a load shared with other processes weighs on every N alike).
Per N: images/s per seed = steps x batch_size / seconds (each replica trains on batch_size
images a step), median over the rounds; all seeds = N x that. The last line is the ratio of
each N's per-seed median to N = 1's (below 1: a replica trains slower beside others; N x the
ratio: the speed-up of training N seeds at once over N runs one after another).
`--seed_batching=both` measures each N > 1 vmapped and unrolled (`train.make_train_chunk`).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from irst_jax import models, optim, platform_settings, train  # noqa: E402
from irst_jax.data import device_data  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", "configs/acm_unet.py", "Config file.",
                                         lock_config=False)
BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch size (each replica's).")
CROP = flags.DEFINE_integer("crop", 256, "Training crop side, pixels (a multiple of 32).")
SEEDS = flags.DEFINE_list("seeds", ["1", "2", "4"], "Replica counts to compare.")
ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds (each times every replica count).")
DISPATCHES = flags.DEFINE_integer("dispatches", 3, "Dispatches timed per count and round.")
STEPS_PER_DISPATCH = flags.DEFINE_integer("steps_per_dispatch", 0, "Steps a dispatch (0: "
                                          "train.steps_per_dispatch's automatic choice).")
TIME_LIMIT = flags.DEFINE_float("time_limit_s", 0.0, "Start no round after this many seconds "
                                "from the start (0: none); the result reports the rounds done.")
BATCHING = flags.DEFINE_enum("seed_batching", "auto", ["auto", "vmap", "unrolled", "both"],
                             "How the replicas run (train.make_train_chunk): auto (the "
                             "backend's, train.SEED_BATCHING), vmap, unrolled, or both (each "
                             "N > 1 both ways).")
OUT = flags.DEFINE_string("out", None, "Also write the result as JSON here.")

def key(label: str) -> str:
  """'N=2 vmap' -> '2 vmap': the JSON key of a setup (the replica count, and the batching when
  both are measured)."""
  return label[2:]


NUM_IMAGES = 256   # 16 steps an epoch at batch 16: a GPU dispatch of 16 steps


def synthetic_split(crop: int, seed: int = 0) -> device_data.TrainData:
  """NUM_IMAGES grey uint8 images of crop x crop pixels, each with a 3 x 3 target at a random place."""
  rng = np.random.default_rng(seed)
  images = [rng.integers(0, 256, (crop, crop), dtype=np.uint8) for _ in range(NUM_IMAGES)]
  masks = []
  for _ in range(NUM_IMAGES):
    mask = np.zeros((crop, crop), np.uint8)
    y, x = rng.integers(0, crop - 3, 2)
    mask[y:y + 3, x:x + 3] = 1
    masks.append(mask)
  return device_data.from_examples(images, masks, crop)


def main(argv):
  del argv
  start_all = time.perf_counter()
  config = CONFIG.value
  batch, crop = BATCH.value, CROP.value
  counts = [int(s) for s in SEEDS.value]
  devices = jax.local_devices()
  data = synthetic_split(crop)
  on_devices = device_data.put_on_devices(data, devices)
  settings = device_data.Augmentation(crop=crop, center_prob=0.5, flips=True, shuffle=True,
                                      mean=(100.0,), std=(40.0,))
  steps_epoch = device_data.steps_per_epoch(NUM_IMAGES, batch)
  with config.unlocked():
    config.train.steps_per_dispatch = STEPS_PER_DISPATCH.value
  k = train.steps_per_dispatch(config.train, steps_epoch)
  model = models.create_model(config.model, axis_name=train.AXIS)
  tx, schedule = optim.create_optimizer(config.optim, steps_epoch, config.train.num_epochs)
  auto = train.SEED_BATCHING.get(jax.default_backend(), "vmap")
  modes = {"auto": [auto], "both": ["vmap", "unrolled"]}.get(BATCHING.value, [BATCHING.value])
  # (label, replicas, batching): one replica runs the same program either way
  setups = [(f"N={n}" if n == 1 or len(modes) == 1 else f"N={n} {m}", n, m)
            for n in counts for m in (modes if n > 1 else modes[:1])]
  labels = [label for label, _, _ in setups]
  replicas = {label: n for label, n, _ in setups}
  runs, compile_s = {}, {}
  for label, n, mode in setups:
    with config.unlocked():
      config.train.num_seeds = n
    state = train.create_train_state(model, config, tx,
                                     (1, crop, crop, config.model.in_channels))
    chunk = train.make_train_chunk(model, config.train.loss, schedule, settings, num_steps=k,
                                   global_batch=batch, seed=config.train.seed,
                                   num_seeds=n, seed_batching=mode)
    replicated = train.replicate(state)
    start = time.perf_counter()
    replicated, metrics = chunk(replicated, on_devices, 0, 0)   # compiles
    jax.block_until_ready(metrics)
    compile_s[label] = time.perf_counter() - start
    runs[label] = [replicated, chunk]
    print(f"{label}{f' ({mode})' if n > 1 else ''}: compiled and ran one dispatch in "
          f"{compile_s[label]:.1f} s", flush=True)
  per_seed = {label: [] for label in labels}
  for r in range(ROUNDS.value):
    if TIME_LIMIT.value and time.perf_counter() - start_all > TIME_LIMIT.value:
      print(f"time limit: {r} round(s) done", flush=True)
      break
    order = labels if r % 2 == 0 else labels[::-1]   # alternate the order too
    for n in order:
      state, chunk = runs[n]
      start = time.perf_counter()
      for d in range(DISPATCHES.value):
        first = (d * k) % max(steps_epoch - k + 1, 1)
        state, metrics = chunk(state, on_devices, 1 + r, first)
      jax.block_until_ready(metrics)
      seconds = time.perf_counter() - start
      runs[n][0] = state
      per_seed[n].append(DISPATCHES.value * k * batch / seconds)
    print(f"round {r + 1}: " + ", ".join(f"{n} {per_seed[n][-1]:.2f}" for n in labels)
          + " images/s per seed", flush=True)
  medians = {n: float(np.median(v)) if v else float("nan") for n, v in per_seed.items()}
  base = medians[labels[0]]
  result = {"model": config.model.name, "backend": jax.default_backend(),
            "device": devices[0].device_kind, "devices": len(devices), "batch_size": batch,
            "crop": crop, "steps_per_dispatch": k, "dispatches": DISPATCHES.value,
            "rounds": len(per_seed[labels[0]]), "jax": jax.__version__,
            "seed_batching": {key(label): mode for label, n, mode in setups if n > 1},
            "compile_and_first_dispatch_s": {key(n): v for n, v in compile_s.items()},
            "images_per_sec_per_seed": {key(n): v for n, v in per_seed.items()},
            "median_per_seed": {key(n): medians[n] for n in labels},
            "median_all_seeds": {key(n): replicas[n] * medians[n] for n in labels},
            "ratio_per_seed": {key(n): medians[n] / base for n in labels}}
  print(f"{config.model.name}, batch {batch}, crop {crop}, {len(devices)} "
        f"{devices[0].device_kind} device(s), {k} step(s) a dispatch, "
        f"{result['rounds']} round(s), medians:")
  for n in labels:
    print(f"  {n}: {medians[n]:.2f} images/s per seed, {replicas[n] * medians[n]:.2f} all seeds")
  print(f"ratio per seed vs {labels[0]}: " + ", ".join(
      f"{n} {medians[n] / base:.2f}x (all seeds {replicas[n] * medians[n] / base:.2f}x)"
      for n in labels))
  if OUT.value:
    Path(OUT.value).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  platform_settings.apply(malloc=True, huge_pages=True)   # as irst_jax.main does
  app.run(main)
