"""The training split held in device memory; crop, flips and transpose in ``jax.numpy``.

The split is read once through its TFDS builder (:func:`load_train_data`) into a canvas common
to all its examples (uint8 images ``[N, Hc, Wc, 1]``, masks ``[N, Hc, Wc]`` in {0, 1}, sizes
``[N, 2]`` (H, W)) plus the list of every target pixel, and copied to each local device
(:func:`put_on_devices`; NUAA-SIRST, NUDT-SIRST and MDvsFA-cGAN hold 70-330 MB). The compiled
training step then draws its examples itself (:func:`draw_batch`): no host loader, no
host-device copy per step.

Sampling. Epoch ``e`` visits the examples in the order of one global permutation
``jax.random.permutation(fold_in(key, e), N)`` (the identity with ``dataset.shuffle=False``),
the same on every device and process. The global batch of step ``s`` of the epoch is
``permutation[s * B:(s + 1) * B]``; device ``d`` of process ``p`` (``D`` local devices,
``b = B / (P D)`` examples each) takes positions ``(p D + d) b .. (p D + d + 1) b - 1`` of it
(:func:`device_positions`). An epoch has ``N // B`` steps: the last partial batch is dropped,
as the host loader with ``num_workers=0`` did. Each example's augmentation draws from
``fold_in(fold_in(fold_in(key, e), s), position)``, so a (seed, epoch, step) gives the same
global batch whatever the number of devices or processes.

Augmentation (:func:`augment`), the distribution of the former Grain ``_TrainTransform``:

- An image smaller than the crop ``c`` in a side counts as zero-padded bottom/right to ``c``
  in that side after normalisation (the mean grey; mask 0). Let ``H' = max(H, c)``,
  ``W' = max(W, c)``.
- With probability ``center_on_target_prob``, and when the mask has a target pixel, one target
  pixel ``(ty, tx)`` is drawn uniformly from all of the example's target pixels and the crop's
  top-left corner is ``(clip(ty - c // 2, 0, H' - c), clip(tx - c // 2, 0, W' - c))``; otherwise
  it is uniform on ``[0, H' - c] x [0, W' - c]``.
- With ``augment``: a horizontal flip, a vertical flip and a transpose, in this order, each with
  probability 0.5.
- Normalisation ``(x - mean[ch]) / std[ch]`` on the 0..255 scale (channel count = size of mean:
  3 for ``imagenet_rgb``, the grey image replicated), see :mod:`irst_jax.data.pipeline`.

Pixels of a crop outside the image's own ``H x W`` are 0 (image, after normalisation) and 0
(mask) whatever the canvas holds there: the canvas padding never reaches a crop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from irst_jax.data import pipeline

#: Stream tag folded into PRNGKey(seed) for the data draws (keeps them apart from the model's
#: initialisation and dropout keys, which come from `jax.random.split(PRNGKey(seed))`).
DATA_STREAM = 0x0DA7A


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Static settings of :func:`augment` / :func:`draw_batch` (hashable: a compile-time constant).

  ``crop``: crop side, px; ``center_prob``: probability of a crop centred on a target;
  ``flips``: random flips and transpose; ``shuffle``: a random permutation per epoch (else the
  split's order); ``mean`` / ``std``: per output channel, 0..255 scale.
  """

  crop: int
  center_prob: float
  flips: bool
  shuffle: bool
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @property
  def channels(self) -> int:
    return len(self.mean)


@dataclasses.dataclass(frozen=True)
class TrainData:
  """A training split on the host, padded to one canvas (see the module docstring).

  ``images`` uint8 [N, Hc, Wc, 1]; ``masks`` uint8 [N, Hc, Wc] in {0, 1}; ``sizes`` int32
  [N, 2] (H, W); ``targets`` int32 [T + 1, 2] the (y, x) of every target pixel, example by
  example in row-major order, plus one (0, 0) entry so that the array is never empty;
  ``target_start`` / ``target_count`` int32 [N]: each example's run in ``targets``. The canvas
  is at least the crop in each side, so every crop window lies inside it.
  """

  images: np.ndarray
  masks: np.ndarray
  sizes: np.ndarray
  targets: np.ndarray
  target_start: np.ndarray
  target_count: np.ndarray

  @property
  def num_examples(self) -> int:
    return int(self.images.shape[0])

  def arrays(self) -> dict[str, np.ndarray]:
    """The arrays :func:`draw_batch` reads, by name."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @property
  def nbytes(self) -> int:
    return sum(a.nbytes for a in self.arrays().values())


def from_examples(images: list[np.ndarray], masks: list[np.ndarray], crop: int,
                  canvas: Optional[tuple[int, int]] = None, padding: int = 0) -> TrainData:
  """Packs uint8 images [H, W] or [H, W, 1] and masks (target where > 0) into a `TrainData`.

  ``canvas``: (Hc, Wc), default the largest H and W and at least ``crop``; ``padding``: the value
  written into the canvas outside each image, in images and masks (tests use markers).

  Raises:
    ValueError: no examples, an image and its mask of different sizes, or a canvas smaller than
      an image or the crop.
  """
  if not images or len(images) != len(masks):
    raise ValueError(f"expected as many masks as images, at least one: got {len(images)} images "
                     f"and {len(masks)} masks")
  sizes = np.array([np.shape(im)[:2] for im in images], np.int32)
  for i, (im, m) in enumerate(zip(images, masks)):
    if np.shape(m)[:2] != np.shape(im)[:2]:
      raise ValueError(f"example {i}: mask {np.shape(m)[:2]} and image {np.shape(im)[:2]} differ")
  largest = tuple(int(max(v, crop)) for v in sizes.max(axis=0))
  hc, wc = canvas or largest
  if hc < largest[0] or wc < largest[1]:
    raise ValueError(f"canvas {(hc, wc)} is smaller than the largest image or crop {largest}")
  n = len(images)
  out_images = np.full((n, hc, wc, 1), padding, np.uint8)
  out_masks = np.full((n, hc, wc), padding, np.uint8)
  targets, starts, counts = [], np.zeros(n, np.int32), np.zeros(n, np.int32)
  total = 0
  for i, (im, m) in enumerate(zip(images, masks)):
    h, w = sizes[i]
    out_images[i, :h, :w, 0] = np.reshape(im, (h, w))
    on = np.reshape(m, (h, w)) > 0
    out_masks[i, :h, :w] = on
    ys, xs = np.nonzero(on)
    targets.append(np.stack([ys, xs], axis=-1).astype(np.int32))
    starts[i], counts[i] = total, len(ys)
    total += len(ys)
  targets.append(np.zeros((1, 2), np.int32))
  return TrainData(out_images, out_masks, sizes, np.concatenate(targets), starts, counts)


def augmentation(dataset_config, builder=None) -> Augmentation:
  """The `Augmentation` of a dataset config (normalisation statistics from its builder).

  Raises:
    ValueError: crop_size not a positive multiple of 32, center_on_target_prob outside [0, 1],
      or an unknown normalization.
  """
  crop = pipeline._check_multiple("crop_size", dataset_config.crop_size)
  p = float(dataset_config.center_on_target_prob)
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"center_on_target_prob must be in [0, 1], got {p}.")
  builder = builder or pipeline.load_builder(dataset_config)
  mean, std = pipeline._normalization_arrays(dataset_config, builder)
  return Augmentation(crop=crop, center_prob=p, flips=bool(dataset_config.augment),
                      shuffle=bool(dataset_config.get("shuffle", True)),
                      mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))


def load_train_data(dataset_config) -> tuple[TrainData, Augmentation]:
  """Reads the training split (``dataset_config.train_split``) once through its TFDS builder.

  Returns the split packed on one canvas (at least the crop) and its `Augmentation`.

  Raises:
    ValueError: bad crop_size (not a positive multiple of 32, or larger than every training
      image), center_on_target_prob outside [0, 1], unknown dataset or normalization, or an
      empty split.
  """
  builder = pipeline.load_builder(dataset_config)
  settings = augmentation(dataset_config, builder)
  largest = builder.info.metadata.get("max_train_side")
  if largest is not None and settings.crop > largest:
    raise ValueError(
        f"crop_size={settings.crop} is larger than every training image of {dataset_config.name}/"
        f"{dataset_config.builder_config} (longest side {largest} px); choose a crop_size "
        f"<= {largest // 32 * 32}. Images smaller than the crop in one side are zero-padded.")
  source = builder.as_data_source(split=dataset_config.train_split)
  if len(source) == 0:
    raise ValueError(f"split {dataset_config.train_split!r} of {dataset_config.name}/"
                     f"{dataset_config.builder_config} is empty")
  examples = [source[i] for i in range(len(source))]
  data = from_examples([ex["image"] for ex in examples], [ex["mask"] for ex in examples],
                       settings.crop)
  return data, settings


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """``num_examples // global_batch``: full global batches only (the remainder is dropped)."""
  return int(num_examples) // int(global_batch)


def put_on_devices(data: TrainData, devices: Optional[list] = None,
                   axis_name: str = "batch") -> dict[str, jax.Array]:
  """A copy of every array of `data` on each device, as [D, ...] arrays sharded along the
  first axis (the layout `jax.pmap` takes and gives over `devices`, default the local ones)."""
  devices = list(devices or jax.local_devices())
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (axis_name,)),
                                        jax.sharding.PartitionSpec(axis_name))

  def put(x):
    shards = [jax.device_put(x[None], d) for d in devices]
    return jax.make_array_from_single_device_arrays((len(devices),) + x.shape, sharding, shards)

  return {k: put(v) for k, v in data.arrays().items()}


def data_key(seed: int) -> jax.Array:
  """The raw uint32 key of the data draws of a run of `seed`."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), DATA_STREAM)


def epoch_permutation(key: jax.Array, epoch, num_examples: int, shuffle: bool = True
                      ) -> jax.Array:
  """int32 [N]: the order epoch `epoch` visits the examples in (the same on every device)."""
  if not shuffle:
    return jnp.arange(num_examples, dtype=jnp.int32)
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples).astype(jnp.int32)


def device_positions(per_device: int, device_index, num_local_devices: int,
                     process_index: int = 0) -> jax.Array:
  """int32 [per_device]: the positions in the global batch that one device takes.

  `device_index`: the device's index among the process's `num_local_devices` (under `pmap`,
  `jax.lax.axis_index`); `process_index`: the JAX process. The global batch is laid out
  process by process, device by device.
  """
  first = (process_index * num_local_devices + device_index) * per_device
  return first + jnp.arange(per_device, dtype=jnp.int32)


def example_keys(key: jax.Array, epoch, step, positions: jax.Array) -> jax.Array:
  """[len(positions), 2] raw keys, one per example: ``fold_in(fold_in(fold_in(key, epoch),
  step), position)`` (the same key for the same global position whatever the device layout)."""
  key = jax.random.fold_in(jax.random.fold_in(key, epoch), step)
  return jax.vmap(lambda p: jax.random.fold_in(key, p))(positions)


def _crop_corner(key: jax.Array, data: dict, index, crop: int, center_prob: float
                 ) -> tuple[jax.Array, jax.Array]:
  """Top-left corner (y0, x0) of one example's crop (see the module docstring)."""
  k_on, k_target, k_y, k_x = jax.random.split(key, 4)
  h, w = data["sizes"][index, 0], data["sizes"][index, 1]
  hp, wp = jnp.maximum(h, crop), jnp.maximum(w, crop)   # the size padded to the crop
  count = data["target_count"][index]
  on_target = (jax.random.uniform(k_on) < center_prob) & (count > 0)
  k = jax.random.randint(k_target, (), 0, jnp.maximum(count, 1))
  ty, tx = data["targets"][data["target_start"][index] + k]
  centred = (jnp.clip(ty - crop // 2, 0, hp - crop), jnp.clip(tx - crop // 2, 0, wp - crop))
  uniform = (jax.random.randint(k_y, (), 0, hp - crop + 1),
             jax.random.randint(k_x, (), 0, wp - crop + 1))
  return (jnp.where(on_target, centred[0], uniform[0]),
          jnp.where(on_target, centred[1], uniform[1]))


def augment(data: dict, index, key: jax.Array, settings: Augmentation
            ) -> tuple[jax.Array, jax.Array]:
  """One training example: crop, flips / transpose, normalisation (the module docstring).

  The crop and the flips are one gather: output pixel (i, j) reads canvas pixel
  ``(y0 + r, x0 + q)``, where (r, q) is (i, j) transposed, then flipped vertically and
  horizontally as drawn (the same as flipping, then transposing the crop; selecting between
  flipped copies of the crop with ``jnp.where`` runs several times slower on XLA:CPU).

  Args:
    data: the arrays of one device's `TrainData` (``TrainData.arrays()``, on that device).
    index: int scalar, the example's index in the split.
    key: its raw uint32 key.
    settings: the `Augmentation`.

  Returns:
    (image float32 [c, c, C] normalised, mask float32 [c, c, 1] in {0, 1}), c = crop.
  """
  c = settings.crop
  k_crop, k_flip = jax.random.split(key)
  y0, x0 = _crop_corner(k_crop, data, index, c, settings.center_prob)
  h, w = data["sizes"][index, 0], data["sizes"][index, 1]
  i, j = jnp.arange(c)[:, None], jnp.arange(c)[None, :]
  r, q = i, j
  if settings.flips:
    hflip, vflip, transpose = jax.random.bernoulli(k_flip, 0.5, (3,))
    r, q = jnp.where(transpose, j, i), jnp.where(transpose, i, j)
    r, q = jnp.where(vflip, c - 1 - r, r), jnp.where(hflip, c - 1 - q, q)
  ys, xs = y0 + r, x0 + q
  inside = (ys < h) & (xs < w)
  image = data["images"][index, ys, xs, 0][..., None].astype(jnp.float32)
  mask = data["masks"][index, ys, xs]
  mean = jnp.asarray(settings.mean, jnp.float32)
  std = jnp.asarray(settings.std, jnp.float32)
  image = jnp.where(inside[..., None], (image - mean) / std, 0.0)
  mask = jnp.where(inside & (mask > 0), 1.0, 0.0).astype(jnp.float32)[..., None]
  return image, mask


def draw_batch(data: dict, key: jax.Array, epoch, step, positions: jax.Array,
               settings: Augmentation, global_batch: int, order: Optional[jax.Array] = None
               ) -> dict[str, jax.Array]:
  """The examples at `positions` of the global batch of step `step` of epoch `epoch`, augmented.

  Pure ``jax.numpy`` (to be traced inside the training step): the example indices are
  ``epoch_permutation(key, epoch)[step * global_batch + positions]``, each augmented with its
  `example_keys` key.

  Args:
    data: one device's arrays of a `TrainData` (N examples).
    key: the run's data key (`data_key`).
    epoch, step: int scalars (step: within the epoch, < N // global_batch).
    positions: int32 [b] positions in the global batch (`device_positions`).
    settings: the `Augmentation`.
    global_batch: B, the examples of one step over all devices and processes.
    order: ``epoch_permutation(key, epoch, N, settings.shuffle)`` when already computed (a
      training chunk computes it once for its steps).

  Returns:
    {'image': float32 [b, c, c, C], 'mask': float32 [b, c, c, 1], 'index': int32 [b]}.
  """
  n = data["images"].shape[0]
  if order is None:
    order = epoch_permutation(key, epoch, n, settings.shuffle)
  index = order[step * global_batch + positions]
  keys = example_keys(key, epoch, step, positions)
  image, mask = jax.vmap(lambda i, k: augment(data, i, k, settings))(index, keys)
  return {"image": image, "mask": mask, "index": index}


def host_batch(data: TrainData, settings: Augmentation, seed: int, epoch: int, step: int,
               global_batch: int, positions: Optional[Any] = None) -> dict[str, np.ndarray]:
  """`draw_batch` on the default device for host-side use (tests, inspection): numpy arrays of
  the global batch (or of `positions` in it)."""
  positions = np.arange(global_batch, dtype=np.int32) if positions is None else positions
  fn = jax.jit(draw_batch, static_argnames=("settings", "global_batch"))
  out = fn(jax.tree_util.tree_map(jnp.asarray, data.arrays()), data_key(seed), epoch, step,
           jnp.asarray(positions, jnp.int32), settings=settings, global_batch=global_batch)
  return jax.tree_util.tree_map(np.asarray, out)
