"""Training and evaluation loop: pmapped steps over all local devices, checkpoints, logging.

Data parallelism: the global batch [devices, batch / devices, H, W, C] is split over the
devices under `jax.pmap` (axis name `batch`); BatchNorm statistics are synchronised
(`layers.batch_norm(axis_name='batch')`), losses are computed on global sums and gradients
psum-med (`losses.global_sum`), so a step on D devices equals a step on one device holding
the whole batch.

Several processes (hosts, `irst_jax.distributed`): the training and evaluation steps are
pmapped over every device of every process, each process feeding its own devices. Every
process runs this loop; the decisions that would differ between processes are exchanged (the
time limit, a non-finite loss: `distributed.any_process_each`; the latest checkpoint step and
the workdir's lock record, which show a workdir that is not shared:
`distributed.same_on_all_processes`); process 0 alone prepares the dataset (before the others
read it), holds the workdir's lock and writes config.json, normalization.json, the logs
(train.log, metrics.jsonl, TensorBoard) and best_metrics.json; every process takes part in
the Orbax checkpoint saves and restores (Orbax's multi-process contract). A process that
fails before training (a bad config, a busy workdir) stops the others with an error instead
of leaving them waiting.

Input: the training split is held on every device (`irst_jax.data.device_data`) and each step
draws and augments its examples inside the compiled program; `train.steps_per_dispatch` steps
run in one pmapped `lax.scan` (`make_train_chunk`; automatic: 16 on GPU / TPU, 1 on CPU, see
`steps_per_dispatch`). An epoch of S = N // batch steps runs as
chunks of K = min(steps_per_dispatch, S) steps and, when K does not divide S, one last chunk of
S mod K steps: at most two compiled training programs. The loss of each step comes back once
per chunk (checked for NaN one chunk late, so that the device never waits on the host), and
the checkpoints of `checkpoint_every_epochs` are written asynchronously (Orbax).

Several seeds (`train.num_seeds` = N > 1): N independent replicas, replica i a run of seed
`train.seed + i` (its initialisation, dropout and data order), train in the same compiled
programs, the step `jax.vmap`-ped over their stacked parameters, optimiser states, BatchNorm
statistics and RNG keys inside the pmap on GPU / TPU, unrolled replica by replica on CPU
(`make_train_chunk`, `SEED_BATCHING`); each replica is evaluated in
turn and the records hold the mean, standard deviation and each replica's value
(`irst_jax.evaluation.seeds`); the best checkpoint is the one of the best mean IoU; checkpoints
hold every replica (leading axis N of those leaves). A non-finite loss of any replica stops
the run. `images_per_sec` counts each replica's images once (images a second per seed).

A run is resumable: rerunning the same command continues from the latest checkpoint of the
workdir (step, params, optimiser state, batch statistics, RNG, epoch). A workdir takes one
training run at a time (`checkpoints.workdir_lock`); the config is validated before anything
is written (`config_checks`).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging as std_logging
import math
import pathlib
import sys
import time
import zlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.experimental import multihost_utils
from tqdm import tqdm

from irst_jax import checkpoints, config_checks, convert, distributed, errors, losses, models, optim
from irst_jax.data import device_data, pipeline
from irst_jax.evaluation import curves as curves_lib
from irst_jax.evaluation import protocols, report, seeds, tables
from irst_jax.evaluation import tta as tta_lib

AXIS = "batch"


class TrainingDivergedError(errors.UserError, RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept (a user error: the
  learning rate or the data need a change)."""


class TrainState(train_state.TrainState):
  batch_stats: Any
  rng: jax.Array  # raw uint32 PRNG key; per-step keys are folded in from the step and device


def num_seeds(config: ml_collections.ConfigDict) -> int:
  """`train.num_seeds`: the replicas a run trains at once (1 for configs without the field)."""
  return int(config.train.get("num_seeds", 1))


def create_train_state(model, config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                       input_shape: tuple[int, ...]) -> TrainState:
  """Initialises the model on an input of `input_shape` (NHWC) with `config.train.seed`.

  With `train.num_seeds` = N > 1, N replicas, replica i initialised exactly as a run of seed
  `train.seed + i` is, stacked: every leaf of params, batch_stats, opt_state and rng gets a
  leading axis of N (the step stays one scalar; `seed_axes`).

  The initialisers draw with JAX's non-partitionable Threefry (`jax.threefry_partitionable
  (False)`, the pre-0.5 default; the state is created on one device and then replicated).
  On jaxlib 0.10 CPU, the partitionable default costs XLA seconds of compilation per extra
  random draw in one program, which makes the init's compilation several times slower.

  Then, outside the compiled init, the one hook for pretrained weights: a pretrained backbone
  that `config.model` names (e.g. CGRANet's `model.backbone_weights`) replaces its initial
  variables (`convert.load_pretrained`, raising FileNotFoundError naming the file,
  errors.MissingDependencyError or convert.ConversionError naming the tensor).
  """
  init = jax.jit(lambda r: model.init(r, jnp.zeros(input_shape, jnp.float32)))

  def one(seed: int) -> TrainState:
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    with jax.threefry_partitionable(False):
      variables = init(init_rng)
    variables = convert.load_pretrained(variables, config.model)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}), tx=tx, rng=train_rng)

  if num_seeds(config) == 1:
    return one(config.train.seed)
  states = [one(config.train.seed + i) for i in range(num_seeds(config))]
  stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)
  return stacked.replace(step=states[0].step)


def seed_axes(state: TrainState) -> TrainState:
  """The `jax.vmap` axes of a state of several replicas: axis 0 of params, batch_stats,
  opt_state and rng; the step (the same for all) not mapped."""
  return state.replace(step=None, params=0, batch_stats=0, opt_state=0, rng=0)


def seed_replica(tree: Any, index: int) -> Any:
  """Replica `index` of an unreplicated state of several replicas (numpy, or traced inside a
  step): the params, batch_stats, opt_state and rng leaves indexed on their leading axis (a
  TrainState), or every leaf (any other tree)."""
  take = lambda t: jax.tree_util.tree_map(lambda x: x[index], t)
  if isinstance(tree, TrainState):
    return tree.replace(params=take(tree.params), batch_stats=take(tree.batch_stats),
                        opt_state=take(tree.opt_state), rng=take(tree.rng))
  return take(tree)


def _step_function(model, loss_name: str, schedule: optax.Schedule) -> Callable:
  """(state, batch {'image', 'mask'}) -> (state, {loss, learning_rate}): one optimiser step,
  to be run under `pmap` over axis `AXIS`."""
  loss_fn = losses.get_loss(loss_name, axis_name=AXIS)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))

    def compute_loss(params):
      outputs, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
          mutable=["batch_stats"], rngs={"dropout": rng})
      return loss_fn(outputs, batch["mask"]), updates

    (loss, updates), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    grads = jax.lax.psum(grads, AXIS)
    new_state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    return new_state, {"loss": loss, "learning_rate": schedule(state.step)}

  return train_step


def make_train_step(model, loss_name: str, schedule: optax.Schedule,
                    devices: Optional[list] = None) -> Callable:
  """pmapped step: (replicated state, sharded batch) -> (state, metrics {loss, learning_rate}).

  The batch is {'image': f32 [D, b, H, W, C], 'mask': f32 [D, b, H, W, 1]} given by the caller
  (benchmarks, tests; D local devices); training draws its batches on the device instead
  (`make_train_chunk`). `devices`: the devices to map over (default: every device of every
  process, `jax.devices()`).
  """
  return jax.pmap(_step_function(model, loss_name, schedule), axis_name=AXIS,
                  donate_argnums=(0,), devices=devices)


def make_train_chunk(model, loss_name: str, schedule: optax.Schedule,
                     settings: device_data.Augmentation, *, num_steps: int, global_batch: int,
                     seed: int, devices: Optional[list] = None, num_seeds: int = 1,
                     seed_batching: Optional[str] = None) -> Callable:
  """pmapped `num_steps` training steps whose examples are drawn and augmented on the device.

  Returns (replicated state, data, epoch, first) -> (state, {'loss', 'learning_rate'}: f32
  [D, num_steps], one value a step), running steps `first .. first + num_steps - 1` of epoch
  `epoch` (ints; first + num_steps <= the epoch's steps) in one `lax.scan`. `data`: the
  split's arrays on the local devices (`device_data.put_on_devices`); step s trains on its
  devices' share of the global batch `device_data.draw_batch(..., epoch, s, ...)` of
  `global_batch` examples (over all processes), keyed by `device_data.data_key(seed)`. The
  same steps run as single-step chunks or as one chunk give the same state
  (`make_train_step`'s step). `devices`: the devices to map over (default: every device of
  every process, `jax.devices()`, process by process: the index of a device under the pmap,
  `lax.axis_index`, is its place in the global batch, `device_data.device_positions`).

  `num_seeds` = S > 1: the state holds S replicas (`create_train_state`, leading axis S of
  params, batch_stats, opt_state, rng) and each step is `jax.vmap`-ped over them: replica i
  draws its batches (permutation and augmentation) with `data_key(seed + i)` and its dropout
  from its own rng, and its BatchNorm statistics and gradients are reduced over the devices
  for that replica alone (the collectives of a vmapped function stay per replica). Each
  replica's step is the step of a run of seed `seed + i`; the losses come back as
  [D, num_steps, S] (the learning rate, the same for all, as [D, num_steps]).
  `seed_batching`: 'vmap' (the above) or 'unrolled' (the S steps one after another in the same
  program: the same results, S times the program); default `SEED_BATCHING` of the backend of
  `devices` (or JAX's default backend): vmap on GPU / TPU, where one step of these small
  networks leaves the device mostly idle, unrolled on CPU, where the vmapped step (JAX makes
  grouped convolutions of a batch of kernels) ran at about half the speed of S plain steps
  and the unrolled one at about their speed (experiments/results/benchmark_seeds.md).
  """
  step_fn = _step_function(model, loss_name, schedule)
  backend = devices[0].platform if devices else jax.default_backend()
  seed_batching = seed_batching or SEED_BATCHING.get(backend, "vmap")
  if seed_batching not in ("vmap", "unrolled"):
    raise ValueError(f"seed_batching={seed_batching!r}: expected 'vmap' or 'unrolled'")
  num_devices = len(devices) if devices else jax.device_count()
  per_device = global_batch // num_devices

  def chunk(state: TrainState, data: dict, epoch, first) -> tuple[TrainState, dict]:
    n = data["images"].shape[0]
    # The global index of the device (process p's d-th device: p * D + d).
    positions = device_data.device_positions(per_device, jax.lax.axis_index(AXIS), num_devices)

    def one_seed(state, key, order, step):
      batch = device_data.draw_batch(data, key, epoch, step, positions, settings, global_batch,
                                     order=order)
      return step_fn(state, {"image": batch["image"], "mask": batch["mask"]})

    if num_seeds == 1:
      key = device_data.data_key(seed)
      order = device_data.epoch_permutation(key, epoch, n, settings.shuffle)

      def body(state, step):
        return one_seed(state, key, order, step)
    elif seed_batching == "unrolled":
      keys = [device_data.data_key(seed + i) for i in range(num_seeds)]
      orders = [device_data.epoch_permutation(k, epoch, n, settings.shuffle) for k in keys]

      def body(state, step):
        out = [one_seed(seed_replica(state, i), keys[i], orders[i], step)
               for i in range(num_seeds)]
        stack = lambda *xs: jnp.stack(xs)
        new = [o[0] for o in out]
        state = new[0].replace(
            params=jax.tree_util.tree_map(stack, *[s.params for s in new]),
            batch_stats=jax.tree_util.tree_map(stack, *[s.batch_stats for s in new]),
            opt_state=jax.tree_util.tree_map(stack, *[s.opt_state for s in new]),
            rng=jnp.stack([s.rng for s in new]))
        return state, {"loss": jnp.stack([o[1]["loss"] for o in out]),
                       "learning_rate": out[0][1]["learning_rate"]}
    else:
      keys = jnp.stack([device_data.data_key(seed + i) for i in range(num_seeds)])
      orders = jax.vmap(lambda k: device_data.epoch_permutation(k, epoch, n, settings.shuffle)
                        )(keys)

      def body(state, step):
        axes = seed_axes(state)
        return jax.vmap(one_seed, in_axes=(axes, 0, 0, None),
                        out_axes=(axes, {"loss": 0, "learning_rate": None}))(
                            state, keys, orders, step)

    if num_steps == 1:   # no loop: the program of one step
      state, metrics = body(state, jnp.asarray(first, jnp.int32))
      return state, jax.tree_util.tree_map(lambda x: x[None], metrics)
    return jax.lax.scan(body, state, first + jnp.arange(num_steps, dtype=jnp.int32))

  return jax.pmap(chunk, axis_name=AXIS, donate_argnums=(0,), devices=devices,
                  in_axes=(0, 0, None, None))


#: How `make_train_chunk` runs several replicas by backend (others: 'vmap').
SEED_BATCHING = {"cpu": "unrolled", "gpu": "vmap", "cuda": "vmap", "rocm": "vmap", "tpu": "vmap"}


def steps_per_dispatch(train_config: ml_collections.ConfigDict, steps_per_epoch: int,
                       backend: Optional[str] = None) -> int:
  """K = min(train.steps_per_dispatch, steps_per_epoch) training steps a dispatch.

  `train.steps_per_dispatch` = 0 (the default; also for saved configs that predate the field)
  chooses by backend (default: JAX's default backend): `ACCELERATOR_STEPS_PER_DISPATCH` on GPU
  and TPU, where one dispatch of several steps keeps the device from waiting on the host
  between steps, and 1 on CPU, where the host is the device and XLA:CPU runs the step as the
  body of a while loop (`lax.scan`) several times slower than as a program of its own.
  """
  value = int(train_config.get("steps_per_dispatch", 0))
  if value == 0:
    cpu = (backend or jax.default_backend()) == "cpu"
    value = 1 if cpu else ACCELERATOR_STEPS_PER_DISPATCH
  return max(1, min(value, steps_per_epoch))


#: Steps a dispatch on GPU / TPU when `train.steps_per_dispatch` is 0 (automatic).
ACCELERATOR_STEPS_PER_DISPATCH = 16


def make_eval_step(model, eval_config: ml_collections.ConfigDict, curves: bool = False
                   ) -> Callable:
  """Step: (replicated state, sharded eval batch) -> `curves.evaluation_outputs`.

  Two pmapped programs: the network on the batch's images [D, b, Hn, Wn, C], its logits padded
  to the canvas of `mask` / `valid` [D, b, Hc, Wc, 1] (a very negative logit: no detection,
  and `valid` keeps it out of every count), then the metrics on the canvas. So the network
  compiles once per image shape and the costlier metrics once per canvas
  (`pipeline.create_eval_iterator`). With `curves`, also the score histograms, the target-level
  sweep and the sigmoid `scores` [D, b, Hc, Wc, 1] (for the qualitative grid).

  With test-time augmentation (`eval.tta` 'flips' / 'flips_transpose', `irst_jax.evaluation.tta`), the
  first program runs the network on each transform of the images and gives the mean sigmoid
  probability (0 beyond the network's output), and the metrics threshold it at
  `eval.threshold` (values in "scores" units, `eval_values_units`).
  """
  p = eval_config.threshold
  logit_threshold = float(math.log(p / (1.0 - p)))
  tta = eval_config.get("tta", "none")
  tta_lib.transforms(tta)   # checks the mode

  def network(state: TrainState, image: jax.Array) -> jax.Array:
    outputs = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                          image, train=False)
    return models.final_logits(outputs)

  def forward(state: TrainState, image: jax.Array, valid: Optional[jax.Array],
              canvas: tuple[int, int]) -> jax.Array:
    if tta == "none":
      values, padding = network(state, image), _PADDING_LOGIT
    else:
      values = tta_lib.average_scores(lambda x: network(state, x), image,
                                      tta_lib.image_sizes(valid), tta)
      padding = 0.0
    pad = ((0, 0), (0, canvas[0] - values.shape[1]), (0, canvas[1] - values.shape[2]), (0, 0))
    return jnp.pad(values, pad, constant_values=padding)

  def evaluation(values: jax.Array, mask: jax.Array, valid: jax.Array) -> dict:
    if tta == "none":
      scores = jax.nn.sigmoid(values)
      out = curves_lib.evaluation_outputs(values, logit_threshold, scores, mask, valid,
                                          eval_config, curves=curves)
    else:
      scores = values
      out = curves_lib.evaluation_outputs(values, float(p), scores, mask, valid, eval_config,
                                          curves=curves, values_units="scores")
    if curves:
      out["scores"] = scores
    return out

  forward_step = jax.pmap(forward, axis_name=AXIS, static_broadcasted_argnums=(3,))
  evaluation_step = jax.pmap(evaluation, axis_name=AXIS)

  def eval_step(state: TrainState, batch: dict) -> dict:
    canvas = tuple(int(v) for v in np.shape(batch["mask"])[2:4])
    valid = None if tta == "none" else batch["valid"]   # the image sizes, for TTA only
    values = forward_step(state, batch["image"], valid, canvas)
    return evaluation_step(values, batch["mask"], batch["valid"])

  return eval_step


def eval_values_units(eval_config: ml_collections.ConfigDict) -> str:
  """Units of the thresholded map of `make_eval_step`'s outputs: "logits", or "scores" (mean
  probabilities) with test-time augmentation (`eval.tta`)."""
  return "logits" if eval_config.get("tta", "none") == "none" else "scores"


#: Logit given to the canvas beyond the network's output (sigmoid 0 in float32).
_PADDING_LOGIT = -1e4


def evaluate(eval_step: Callable, state: TrainState, config: ml_collections.ConfigDict,
             split: str, keep_images: int = 0):
  """IoU, nIoU, Pd, Fa (fraction), F-measure of a replicated `state` on a whole split.

  Original image sizes. Each process evaluates its share of the split; with several
  processes the per-image statistics are all-gathered so that every process returns the
  metrics of the whole split. With an `eval_step` made with `curves=True`, returns
  (table numbers incl. AUC, AP, F-area; curves; the first `keep_images` examples as dicts
  of name, image, mask, score cropped to the original size) instead of the numbers alone.
  """
  num_devices = jax.local_device_count()
  evaluation = curves_lib.Evaluation(config.eval, values_units=eval_values_units(config.eval))
  kept: list[dict] = []
  batches = pipeline.create_eval_iterator(
      config.dataset, split=split, batch_size=config.eval.batch_size * num_devices,
      num_devices=num_devices, network_padding=pipeline.eval_network_padding(config.dataset))
  with_curves = False
  total = pipeline.dataset_info(config.dataset).num_examples[split] // jax.process_count()
  progress = tqdm(total=total, desc=f"eval {split}", unit="img", dynamic_ncols=True,
                  file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0,
                  disable=jax.process_index() != 0, leave=False)
  for batch in batches:
    names = batch.pop("name")
    batch = protocols.network_batch(config.eval, batch)   # eval.protocol: dnanet resizes to 256
    out = eval_step(state, batch)
    scores = out.pop("scores", None)
    with_curves = scores is not None
    if jax.process_count() > 1:
      out = multihost_utils.process_allgather(out)
    evaluation.update(jax.device_get(out))
    progress.update(sum(1 for name in np.ravel(names) if len(name)))  # not the dummy padding
    if with_curves and len(kept) < keep_images:
      kept.extend(_examples(batch, names, np.asarray(scores), keep_images - len(kept)))
  progress.close()
  if not with_curves:
    return evaluation.metrics.result()
  values, curves = evaluation.result()
  return values, curves, kept


@functools.cache
def _select_seed() -> Callable:
  """pmapped (replicated tree of replicas [D, S, ...], index) -> replica index's tree [D, ...]
  (one program for every index)."""
  return jax.pmap(lambda tree, index: jax.tree_util.tree_map(lambda x: x[index], tree),
                  axis_name=AXIS, in_axes=(0, None))


def evaluate_seeds(eval_step: Callable, state: TrainState, config: ml_collections.ConfigDict,
                   split: str) -> dict[str, float]:
  """`evaluate` of a replicated state; with `train.num_seeds` = N > 1, of each replica in turn
  (the same compiled programs), summarised by `seeds.summarize`: the mean under the usual
  keys, `k_std` and `k/seed_i`."""
  if num_seeds(config) == 1:
    return evaluate(eval_step, state, config, split)
  per_seed = []
  for i in range(num_seeds(config)):
    replica = state.replace(params=_select_seed()(state.params, i),
                            batch_stats=_select_seed()(state.batch_stats, i))
    per_seed.append(evaluate(eval_step, replica, config, split))
  return seeds.summarize(per_seed)


def _examples(batch: dict, names: np.ndarray, scores: np.ndarray, limit: int) -> list[dict]:
  """Up to `limit` real examples of a sharded eval batch, cropped to their valid area."""
  out = []
  flat = {k: np.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in batch.items()}
  scores = scores.reshape((-1,) + scores.shape[2:])
  for i, name in enumerate(np.asarray(names).reshape(-1)):
    if not name or len(out) == limit:
      continue
    valid = flat["valid"][i, ..., 0] > 0
    h, w = int(valid.any(axis=1).sum()), int(valid.any(axis=0).sum())
    out.append({"name": str(name), "image": flat["image"][i, :h, :w, 0],
                "mask": flat["mask"][i, :h, :w, 0] > 0, "score": scores[i, :h, :w, 0]})
  return out


def replicate(tree: Any, devices: Optional[list] = None) -> Any:
  """Copies every leaf of `tree` to each device, as a [devices, ...] array for the pmapped steps.

  The copies carry the sharding that `jax.pmap(..., axis_name='batch')` gives its outputs, so the
  state a step returns matches the state it was given and the step is compiled once (with
  `flax.jax_utils.replicate` the mesh axis names differ and the second step recompiles).
  """
  devices = list(devices or jax.local_devices())
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                        jax.sharding.PartitionSpec(AXIS))
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)),
                               sharding), tree)


def _first_replica(tree: Any) -> Any:
  """Host copies (numpy) of the first local device's replica of every leaf of a replicated tree.

  Reads each leaf's first shard instead of slicing it (`flax.jax_utils.unreplicate` runs one
  small program a leaf); copies, so that the state's buffers can be donated to the next step
  while an asynchronous checkpoint still writes these arrays.
  """
  return jax.tree_util.tree_map(lambda x: np.array(x.addressable_shards[0].data)[0], tree)


def _checkpoint_state(state: TrainState, epoch: int) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state,
          "step": state.step, "rng": state.rng, "epoch": np.int32(epoch)}


def _restore_into(state: TrainState, restored: dict) -> tuple[TrainState, int]:
  state = state.replace(params=restored["params"], batch_stats=restored["batch_stats"],
                        opt_state=restored["opt_state"], step=int(restored["step"]),
                        rng=jnp.asarray(restored["rng"]))
  return state, int(restored["epoch"])


METRICS_FILE = "metrics.jsonl"


def _read_records(path: pathlib.Path) -> tuple[list[dict], int]:
  """The rows of a metrics.jsonl and the count of unreadable lines (a write cut by a kill)."""
  records, bad = [], 0
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      records.append(json.loads(line))
    except ValueError:
      bad += 1
  return records, bad


def _drop_records_after(path: pathlib.Path, step: int) -> None:
  """Rewrites metrics.jsonl (atomically) without its rows after `step` and its unreadable
  lines: a resumed run trains those steps again and would otherwise log them twice."""
  records, bad = _read_records(path)
  kept = [r for r in records if int(r.get("step", 0)) <= step]
  if len(kept) < len(records) or bad:
    checkpoints.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    logging.info("%s: dropped %d rows after the restored step %d", path,
                 len(records) - len(kept) + bad, step)


def _recorded(path: pathlib.Path, split: str, step: int) -> Optional[dict[str, float]]:
  """The metrics logged for `split` at `step` in metrics.jsonl, or None."""
  rows = [r for r in _read_records(path)[0] if r.get("split") == split and r.get("step") == step]
  if not rows:
    return None
  return {k: v for k, v in rows[-1].items() if k not in ("split", "step", "epoch")}


class RunLogger:
  """metrics.jsonl, TensorBoard events (tensorboardX) and the console, on process 0 only.

  `purge_step`: TensorBoard discards the events of this step and later ones written before
  (a resumed run's steps after its checkpoint), as metrics.jsonl drops its rows.
  """

  def __init__(self, workdir: pathlib.Path, purge_step: Optional[int] = None):
    self.enabled = jax.process_index() == 0
    self.jsonl = workdir / METRICS_FILE
    self.writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=purge_step)

  def write(self, split: str, step: int, epoch: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"split": split, "step": step, "epoch": epoch, **{k: float(v) for k, v in values.items()}}
    with self.jsonl.open("a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in values.items():
      self.writer.add_scalar(f"{split}/{key}", float(value), step)
    self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax and JAX internals (one line a file write) from the logs."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = any(part in record.pathname for part in ("orbax", "/jax/", "xla_bridge"))
    return record.levelno >= std_logging.WARNING or not noisy


@contextlib.contextmanager
def _file_logging(workdir: pathlib.Path, to_file: bool = True):
  """Logs INFO to workdir/train.log (appending; unless not `to_file`: the processes other than
  process 0) as well as the console, without library chatter."""
  handler = None
  if to_file:
    handler = std_logging.FileHandler(workdir / "train.log")
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(_QuietLibraries())
  logger = std_logging.getLogger("absl")
  previous_level = logger.level
  logger.setLevel(min(previous_level or std_logging.INFO, std_logging.INFO))
  if handler is not None:
    logger.addHandler(handler)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    yield
  finally:
    if handler is not None:
      logger.removeHandler(handler)
      handler.close()
    logger.setLevel(previous_level)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint) and evaluates it.

  Order, so that a mistake costs one line and loses nothing: the whole config is validated
  and the model initialised (nothing written yet); the workdir is locked against a second
  training run; a resume is checked against the saved config.json and restored; only then is
  config.json (re)written. A resume may change only `config_checks.SAFE_ON_RESUME` fields
  (and train.num_epochs under a constant or multistep schedule), except from a step-0
  checkpoint (imported weights), which any training settings may fine-tune. On resume,
  metrics.jsonl rows (and TensorBoard events) after the restored step, left by a run that
  stopped before its next checkpoint, are dropped. A rerun of a finished run trains nothing
  and returns its last evaluation.

  Returns {'final': metrics of the last evaluation, 'best': best metrics, 'images_per_sec'}.
  Writes normalization.json with config.json (the statistics it trains with); a resumed run
  uses the stored ones.

  Raises:
    config_checks.ConfigError: an invalid config field (before anything is written), or a
      resume whose config changes fields the checkpoints depend on (naming them).
    checkpoints.WorkdirBusyError: another training run holds the workdir (its pid and host).
    checkpoints.WorkdirMismatchError: the workdir holds a different model's run.
    checkpoints.CheckpointMismatchError: the workdir's checkpoint does not fit the model.
    checkpoints.CheckpointDiskFullError: the disk filled up while a checkpoint was written
      (rerunning resumes from the previous checkpoint).
    checkpoints.NormalizationMismatchError: a resume whose normalization kind changed.
    TrainingDivergedError: the loss became NaN/inf (the last good checkpoint is kept).
  """
  workdir_path = pathlib.Path(workdir).absolute()
  # A resume normalises with the statistics it trained with (normalization.json), whatever
  # copy of the dataset is found now; config.json keeps the config as given.
  trained_config = checkpoints.with_saved_normalization(config, workdir_path, missing_ok=True)
  # Process 0 prepares the dataset (TFDS) if needed, then the others read it.
  info = _on_process_0_first(
      lambda: config_checks.check_training_config(trained_config, jax.device_count()),
      "while checking the config and preparing the dataset")
  steps_per_epoch = device_data.steps_per_epoch(info.num_examples[config.dataset.train_split],
                                                config.train.batch_size)
  model = models.create_model(config.model, axis_name=AXIS)
  tx, schedule = optim.create_optimizer(config.optim, steps_per_epoch, config.train.num_epochs)
  crop = config.dataset.crop_size
  try:
    state = create_train_state(model, config, tx, (1, crop, crop, config.model.in_channels))
  except (ValueError, TypeError, AttributeError, KeyError) as e:
    message = (str(e).splitlines() or [type(e).__name__])[0]
    raise config_checks.ConfigError(
        f"model.* of {config.model.name!r} cannot be built: {message}") from e
  with contextlib.ExitStack() as stack:
    # One lock per run: with several JAX processes (one run), process 0 holds it for all.
    lock, error = None, None
    if distributed.is_primary():
      try:
        lock = stack.enter_context(checkpoints.workdir_lock(workdir_path))
      except Exception as e:  # pylint: disable=broad-except
        error = e
    _raise_if_any_failed(error, "while locking the workdir")
    _check_shared_workdir(workdir_path)
    stack.enter_context(_file_logging(workdir_path, to_file=distributed.is_primary()))
    if lock is not None and lock.describe_takeover():
      logging.warning("%s", lock.describe_takeover())
    return _train_and_evaluate(config, trained_config, workdir_path, info, model, schedule,
                               state, steps_per_epoch)


def _raise_if_any_failed(error: Optional[BaseException], when: str) -> None:
  """Raises `error` where it happened and, when a process failed, a UserError on the others,
  so that no process waits forever at the next collective for one that stopped (one exchange
  with several processes; with one, raises `error` if any)."""
  if distributed.any_process(error is not None):
    if error is not None:
      raise error
    raise errors.UserError(f"another process failed {when} (its error is in its output); "
                           f"process {jax.process_index()} stopped too")


def _on_process_0_first(fn: Callable[[], Any], when: str) -> Any:
  """`fn()` on process 0, then, once it succeeded there, on the other processes (what process 0
  creates, e.g. a prepared dataset, they only read); an error on any process is raised on all
  (`_raise_if_any_failed`)."""
  result, error = None, None
  for turn in (True, False):
    if distributed.is_primary() == turn:
      try:
        result = fn()
      except Exception as e:  # pylint: disable=broad-except
        error = e
    _raise_if_any_failed(error, when)
  return result


def _check_shared_workdir(workdir_path: pathlib.Path) -> None:
  """With several processes, checks that each reads the lock record process 0 just wrote: a
  workdir that is not on a file system shared by every host raises UserError (its checkpoints
  would not be found on resume)."""
  if jax.process_count() == 1:
    return
  try:
    record = (workdir_path / checkpoints.LOCK_FILE).read_bytes()
  except OSError:
    record = b""
  distributed.same_on_all_processes(
      zlib.crc32(record), f"lock records in {workdir_path / checkpoints.LOCK_FILE} (CRC-32; "
      "written by process 0)")


def _train_and_evaluate(given: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                        workdir_path: pathlib.Path, info: pipeline.DatasetInfo, model,
                        schedule: optax.Schedule, state: TrainState, steps_per_epoch: int
                        ) -> dict[str, Any]:
  """The locked part of `train_and_evaluate`: `given` is the config as given (saved as
  config.json, compared on resume), `config` the one trained with (stored normalisation)."""
  num_devices = jax.local_device_count()
  num_epochs = config.train.num_epochs
  logging.info("%s on %s/%s: %d training images, %d steps/epoch, %d epochs, %d device(s)",
               config.model.name, info.name, info.builder_config,
               info.num_examples[config.dataset.train_split], steps_per_epoch, num_epochs,
               num_devices)
  logging.info("parameters: %d", sum(x.size for x in jax.tree_util.tree_leaves(state.params)))

  config_path = workdir_path / checkpoints.CONFIG_FILE
  saved = checkpoints.read_saved_config(workdir_path)
  if saved is not None:
    checkpoints.check_same_model(saved, given, config_path)
  primary = distributed.is_primary()   # the process that holds the lock and writes the logs
  for sub in ("checkpoints", "best") if primary else ():   # unfinished saves of a crashed run
    for path in checkpoints.remove_temporary_folders(workdir_path / sub):
      logging.info("removed the unfinished checkpoint folder %s", path)
  distributed.barrier("irst_jax: unfinished checkpoints removed")
  store = checkpoints.CheckpointStore(workdir_path, keep=config.train.keep_checkpoints,
                                      asynchronous=True)
  try:
    start_epoch = skip_steps = restored_step = 0
    latest = store.latest_step()
    distributed.same_on_all_processes(-1 if latest is None else latest,
                                      f"latest checkpoint steps in {store.latest.directory} "
                                      "(-1: none)")
    if latest is not None:
      if saved is not None and store.latest_step() > 0:   # step 0 (imported weights): any
        config_checks.check_resumable(saved, given, str(config_path))   # training settings
      state, start_epoch = _restore_into(state, store.restore(_checkpoint_state(state, 0)))
      restored_step = int(state.step)
      if restored_step > num_epochs * steps_per_epoch:
        raise config_checks.ConfigError(
            f"train.num_epochs={num_epochs}: the checkpoint in {store.latest.directory} has "
            f"already trained {start_epoch} epochs (step {restored_step}); use a larger "
            "train.num_epochs or a new --workdir")
      # A run stopped by the time limit mid-epoch resumes inside that epoch: its batches are
      # deterministic (seed, epoch, step), so training goes on from the restored step.
      skip_steps = restored_step - start_epoch * steps_per_epoch
      logging.info("resumed from %s at step %d (epoch %d%s)", store.latest.directory,
                   restored_step, start_epoch + 1 if skip_steps else start_epoch,
                   f", step {skip_steps} of {steps_per_epoch}" if skip_steps else "")
    error = None
    if primary:
      try:
        checkpoints.save_normalization(workdir_path, info)   # refuses changed statistics
        checkpoints.save_config(workdir_path, given)   # accepted: the run's config from now on
        store.sync_best_metrics_file()
        _drop_records_after(workdir_path / METRICS_FILE, restored_step)
      except Exception as e:  # pylint: disable=broad-except
        error = e
    _raise_if_any_failed(error, "while writing the workdir's config")
    return _train_loop(config, workdir_path, model, schedule, state, store, start_epoch,
                       skip_steps, steps_per_epoch)
  finally:
    store.close()


def _train_loop(config: ml_collections.ConfigDict, workdir_path: pathlib.Path, model,
                schedule: optax.Schedule, state: TrainState, store: checkpoints.CheckpointStore,
                start_epoch: int, skip_steps: int, steps_per_epoch: int) -> dict[str, Any]:
  num_epochs = config.train.num_epochs
  eval_step = make_eval_step(model, config.eval)
  restored_step = int(state.step)
  state = replicate(state)
  logger = RunLogger(workdir_path, purge_step=restored_step + 1)
  final: dict[str, float] = {}
  if start_epoch >= num_epochs:
    logging.info("the run in %s has trained its %d epochs (step %d): nothing to train; raise "
                 "train.num_epochs to continue", workdir_path, num_epochs, restored_step)
    final = _recorded(workdir_path / METRICS_FILE, config.dataset.eval_split, restored_step)
    if distributed.any_process(final is None):   # every process takes part in the evaluation
      final = evaluate_seeds(eval_step, state, config, config.dataset.eval_split)
      logger.write(config.dataset.eval_split, restored_step, num_epochs, final)
    logger.close()
    return {"final": final, "best": store.best_metrics(), "images_per_sec": float("nan")}
  data, settings = device_data.load_train_data(config.dataset)
  on_devices = device_data.put_on_devices(data, axis_name=AXIS)
  logging.info("training split on the device(s): %d images on a %dx%d canvas, %.1f MB a device",
               data.num_examples, data.images.shape[1], data.images.shape[2], data.nbytes / 1e6)
  chunk_steps = steps_per_dispatch(config.train, steps_per_epoch)
  programs: dict[int, Callable] = {}   # chunk length -> pmapped program (at most 2 lengths)

  def run_chunk(state, epoch, first, length):
    if length not in programs:
      programs[length] = make_train_chunk(
          model, config.train.loss, schedule, settings, num_steps=length,
          global_batch=config.train.batch_size, seed=config.train.seed,
          num_seeds=num_seeds(config))
    return programs[length](state, on_devices, epoch, first)

  throughput: list[float] = []
  deadline = (time.monotonic() + 60.0 * config.train.time_limit_minutes
              if config.train.get("time_limit_minutes") else math.inf)
  progress = tqdm(total=num_epochs * steps_per_epoch, initial=restored_step,
                  desc=config.model.name, unit="step", dynamic_ncols=True, file=sys.stderr,
                  mininterval=1.0 if sys.stderr.isatty() else 30.0,
                  disable=jax.process_index() != 0)
  try:
    for epoch in range(start_epoch, num_epochs):
      epoch_losses: list[np.ndarray] = []
      start, compiled = time.perf_counter(), False
      first, pending, out_of_time = skip_steps, None, False
      while first < steps_per_epoch and not out_of_time:
        length = min(chunk_steps, steps_per_epoch - first)
        compiled = compiled or length not in programs
        state, chunk_metrics = run_chunk(state, epoch, first, length)
        finished = None
        if pending is not None:   # the previous chunk's losses, fetched while this one runs
          finished = _fetch_losses(pending, epoch, steps_per_epoch, progress,
                                   config.train.log_every_steps)
          epoch_losses.append(finished[1])
        pending = (first, chunk_metrics)
        first += length
        out_of_time = _stop_or_raise(finished, deadline, epoch, store)
      if pending is not None:
        finished = _fetch_losses(pending, epoch, steps_per_epoch, progress,
                                 config.train.log_every_steps)
        epoch_losses.append(finished[1])
        out_of_time = _stop_or_raise(finished, deadline, epoch, store) or out_of_time
      trained = first - skip_steps
      skip_steps = 0
      elapsed = time.perf_counter() - start
      # An epoch that compiled a program measures the compilation: no throughput.
      images_per_sec = (float("nan") if compiled or not trained
                        else trained * config.train.batch_size / elapsed)
      if not math.isnan(images_per_sec):
        throughput.append(images_per_sec)
      # [steps] losses, or [steps, S] with S replicas: the epoch's mean loss of each replica
      seed_losses = (np.mean(np.concatenate(epoch_losses), axis=0).reshape(-1) if epoch_losses
                     else np.full(num_seeds(config), np.nan))
      losses_record = ({"loss": float(seed_losses[0])} if num_seeds(config) == 1 else
                       seeds.summarize([{"loss": float(v)} for v in seed_losses]))
      mean_loss = losses_record["loss"]
      step = epoch * steps_per_epoch + first
      finished = first == steps_per_epoch   # False when stopped mid-epoch
      lr = float(schedule(step - 1))
      logger.write("train", step, epoch + 1, {**losses_record, "learning_rate": lr,
                                                "images_per_sec": images_per_sec})
      logging.info("epoch %d/%d step %d loss %.4f lr %.2e %.1f img/s", epoch + 1, num_epochs,
                   step, mean_loss, lr, images_per_sec)
      if out_of_time and step < num_epochs * steps_per_epoch:
        logging.info("train.time_limit_minutes=%s reached at step %d (epoch %d, step %d of %d): "
                     "final checkpoint and evaluation; rerun the command to continue",
                     config.train.time_limit_minutes, step, epoch + 1,
                     step - epoch * steps_per_epoch, steps_per_epoch)
      last = epoch + 1 == num_epochs or out_of_time
      done_epochs = epoch + 1 if finished else epoch   # the checkpoint's epoch: resume point
      host_state = None
      if (epoch + 1) % config.train.checkpoint_every_epochs == 0 or last:
        host_state = _checkpoint_state(_first_replica(state), done_epochs)
        store.save_latest(step, host_state)   # asynchronous: written while training goes on
      if (epoch + 1) % config.train.eval_every_epochs == 0 or last:
        final = evaluate_seeds(eval_step, state, config, config.dataset.eval_split)
        logger.write(config.dataset.eval_split, step, epoch + 1, final)
        is_best = store.save_best(step, host_state or _checkpoint_state(
            _first_replica(state), done_epochs), final)
        logging.info("eval %s epoch %d: %s%s", config.dataset.eval_split, epoch + 1,
                     tables.metrics_line(final), " (best)" if is_best else "")
        if seeds.seeds_line(final):
          logging.info("eval %s epoch %d %s", config.dataset.eval_split, epoch + 1,
                       seeds.seeds_line(final))
        if not last and host_state is not None and _out_of_time(deadline):
          # The evaluation ran past the time limit and this step is checkpointed and
          # evaluated: stop here rather than after one more step and another evaluation.
          logging.info("train.time_limit_minutes=%s reached during the evaluation after epoch "
                       "%d: rerun the command to continue", config.train.time_limit_minutes,
                       epoch + 1)
          break
      if last:
        break
    store.wait()   # the last checkpoint is written before the run reports its end
  finally:
    progress.close()
    logger.close()
  return {"final": final, "best": store.best_metrics(),
          "images_per_sec": float(np.median(throughput)) if throughput else float("nan")}


def _out_of_time(deadline: float) -> bool:
  """Whether any process is past its `deadline` (time.monotonic(); math.inf: no time limit,
  nothing exchanged)."""
  if math.isinf(deadline):
    return False
  return distributed.any_process(time.monotonic() >= deadline)


def _stop_or_raise(finished: Optional[tuple[np.ndarray, np.ndarray]], deadline: float,
                   epoch: int, store: checkpoints.CheckpointStore) -> bool:
  """After a dispatch: raises TrainingDivergedError when the losses of the chunk that
  `finished` (its 1-based global steps [n] and losses [n], or None) are not all finite on
  some process; else returns whether some process is past its `deadline`. With several
  processes the two decisions are exchanged at once, so that every process stops together."""
  steps, losses_ = finished if finished is not None else (np.zeros(0), np.zeros(0))
  losses_ = np.reshape(losses_, (len(losses_), -1) if len(losses_) else (0, 1))   # [n, replicas]
  bad = np.flatnonzero(~np.isfinite(losses_).all(axis=1))
  local_late = time.monotonic() >= deadline
  if jax.process_count() > 1:
    diverged, late = distributed.any_process_each([bad.size > 0, local_late])
  else:
    diverged, late = bad.size > 0, local_late
  if diverged:
    if bad.size:
      row = losses_[bad[0]]
      _check_finite(float(row[~np.isfinite(row)][0]), int(steps[bad[0]]), epoch, store)
    _check_finite(math.nan, int(steps[0]) if steps.size else -1, epoch, store)
  return late


def _fetch_losses(pending: tuple[int, dict], epoch: int, steps_per_epoch: int, progress,
                  log_every_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """(1-based global steps [n], losses [n], or [n, S] with S replicas) of a finished chunk
  (`pending`: its first step in the epoch and its metrics)."""
  first, metrics = pending
  losses_ = np.asarray(metrics["loss"][0])
  steps = epoch * steps_per_epoch + first + 1 + np.arange(len(losses_))   # 1-based global
  if not np.isfinite(losses_).all():
    return steps, losses_
  progress.update(len(losses_))
  logged = np.flatnonzero(steps % log_every_steps == 0)
  if logged.size:
    i = logged[-1]
    progress.set_postfix(loss=f"{float(np.mean(losses_[i])):.4f}",
                         lr=f"{float(np.asarray(metrics['learning_rate'][0])[i]):.2e}")
  return steps, losses_


def _check_finite(loss: float, step: int, epoch: int, store: checkpoints.CheckpointStore) -> None:
  if not math.isfinite(loss):
    last = store.latest_step()   # waits for a checkpoint in flight
    kept = (f"the last good checkpoint (step {last}) is kept in {store.latest.directory}"
            if last is not None else "no checkpoint had been written yet")
    raise TrainingDivergedError(
        f"loss is {loss} at step {step} (epoch {epoch + 1}); training stopped and {kept}. "
        "Lower optim.learning_rate or check the data.")


def evaluate_workdir(workdir: str, which: str = "best",
                     config: Optional[ml_collections.ConfigDict] = None,
                     split: Optional[str] = None,
                     out_dir: Optional[str] = None,
                     protocol: Optional[str] = None,
                     tta: Optional[str] = None) -> dict[str, float]:
  """Evaluates the `which` ('best' or 'latest') checkpoint of a workdir on `split`.

  Returns the table numbers (IoU, nIoU, Pd, Fa, F-measure, AUC, AP, F-area, images) and
  writes the report (`report.write_report`: metrics.json, roc.png, pr.png, grid.png of the
  first `eval.grid_images` images) into `out_dir` (default `<workdir>/eval/<which>_<split>`,
  plus `_<protocol>` for a protocol other than the default and `_tta_<tta>` with test-time
  augmentation). `protocol` overrides the config's `eval.protocol`
  (irst_jax/evaluation/protocols.py), `tta` its `eval.tta` (irst_jax/evaluation/tta.py).
  Eval options missing from an older workdir's saved config take the current defaults.
  A run of `train.num_seeds` = N > 1 evaluates each replica: the values are
  `seeds.summarize`'s (mean under the usual keys, `k_std`, `k/seed_i`); the curves and grid
  are those of the replica with the best IoU on `split`.
  May run beside a training run of the same workdir (it only reads the checkpoints).
  Images are normalised with the workdir's stored statistics (normalization.json,
  `checkpoints.with_saved_normalization`), not those of the dataset copy found now.

  Raises:
    FileNotFoundError: not a workdir (no config.json) or no such checkpoint.
    checkpoints.WorkdirMismatchError: `config` is another model's than the workdir's run.
    checkpoints.CheckpointMismatchError: the checkpoint does not fit the model (one line).
    config_checks.ConfigError: an invalid model or eval field, or a split the dataset lacks.
  """
  saved = checkpoints.load_config(workdir)
  if config is not None:   # another model's config: the refusal training gives, not Orbax's
    checkpoints.check_same_model(checkpoints.read_saved_config(workdir), config,
                                 pathlib.Path(workdir) / checkpoints.CONFIG_FILE)
  config = _with_eval_defaults(config or saved)
  with config.unlocked():   # the replicas the checkpoints hold, whatever config is given
    config.train.num_seeds = num_seeds(saved)
  if protocol is not None:
    with config.unlocked():
      config.eval.protocol = protocol
  if tta is not None:
    with config.unlocked():
      config.eval.tta = tta
  config = checkpoints.with_saved_normalization(config, workdir)   # the trained statistics
  config_checks.check_model(config)
  config_checks.check_eval(config)
  info = _on_process_0_first(lambda: pipeline.dataset_info(config.dataset),   # prepares
                             "while preparing the dataset")
  config_checks.check_split(config, info,
                            "--split" if split else "dataset.eval_split", split)
  split = split or config.dataset.eval_split
  pipeline.check_channels(config.dataset, config.model.in_channels)
  model = models.create_model(config.model, axis_name=AXIS)
  tx, _ = optim.create_optimizer(config.optim, 1, config.train.num_epochs)
  crop = config.dataset.crop_size
  state = create_train_state(model, config, tx, (1, crop, crop, config.model.in_channels))
  store = checkpoints.CheckpointStore(workdir, keep=config.train.keep_checkpoints)
  try:
    state, _ = _restore_into(state, store.restore(_checkpoint_state(state, 0), which=which))
  finally:
    store.close()
  eval_step = make_eval_step(model, config.eval, curves=True)
  replicas = [state] if num_seeds(config) == 1 else [
      seed_replica(state, i) for i in range(num_seeds(config))]
  results = [evaluate(eval_step, replicate(r), config, split,
                      keep_images=int(config.eval.grid_images)) for r in replicas]
  title = f"{config.model.name} {which} on {config.dataset.name} {split}"
  if len(results) == 1:
    values, curves, examples = results[0]
  else:   # the table of every replica; the curves and the grid of the best one
    values = seeds.summarize([r[0] for r in results])
    best = seeds.best_seed(values) or 0
    _, curves, examples = results[best]
    title += f", {len(results)} seeds (curves and grid: seed {best})"
  if jax.process_index() == 0:
    name = f"{which}_{split}" + ("" if config.eval.protocol == protocols.DEFAULT
                                 else f"_{config.eval.protocol}")
    if config.eval.tta != "none":
      name += f"_tta_{config.eval.tta}"
    report.write_report(out_dir or pathlib.Path(workdir) / "eval" / name, values,
                        curves, examples, config.eval,
                        title=title + ("" if config.eval.tta == "none" else f", tta {config.eval.tta}"))
  return values


def _with_eval_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the eval options it lacks (older saved configs) set to the defaults."""
  from irst_jax.configs import default

  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in default.get_base_config().eval.items():
    if key not in config.eval:
      config.eval[key] = value
  return config

