"""Input pipeline: the TFDS (ArrayRecord) data sources of the IRSTD datasets, normalisation, and
the evaluation iterator.

Train: the training split is held in device memory and cropped, flipped and transposed inside
the compiled training step, see :mod:`irst_jax.data.device_data` (it uses this module's
builder loading and normalisation).

Eval (:func:`create_eval_iterator`): whole images at their original size, each placed at the
top-left of a zero-filled canvas (zero after normalisation, i.e. padding with the mean), with a
``valid`` mask (1 on the image's pixels) and the image ``name``. The canvases are at most
``max_eval_canvases`` shapes (default 4; multiples of ``pad_multiple``) planned from the split's
size distribution by :func:`irst_jax.data.canvas.plan_canvases`; each image goes to the
smallest canvas that holds it (:func:`irst_jax.data.canvas.assign`), and a batch holds images
of one canvas. The last batch of a canvas is completed with dummy examples (all-zero ``valid``,
name ``''``). Deterministic order: canvases by (Hc, Wc), images by name within a canvas. The
plan of a split is computed once per process (one pass over the split) and cached.

Why canvases: each shape is one XLA compilation, and padding every image only to its own
multiple of 32 gave one shape per size (NUAA-SIRST 50_50 test: 34 shapes for 214 images, minutes
of compiling on a CPU, about 75 % of each compile in the metrics). The metrics run on the
canvases, so they compile at most ``max_eval_canvases`` programs; the ``valid`` mask is
multiplied into prediction and ground truth, so padding counts in no IoU, nIoU, Pd or Fa
(:mod:`irst_jax.evaluation.metrics`).

Where the network runs (``dataset.eval_network_padding``):

- ``'own'`` (default): on each image padded only to its own multiple of ``pad_multiple``, as
  BasicIRSTD's test loader pads and as the published numbers were measured; the logits are
  then padded to the canvas for the metrics. Same numbers as per-size evaluation, bit for bit;
  one small network-only compilation per padded size.
- ``'canvas'``: on the canvas itself (at most ``max_eval_canvases`` programs in all). The
  network's output on the image's own pixels then changes a little: near the bottom/right
  border its receptive field reaches further into padding, and global pooling (e.g. ACM's
  global context) averages over more padding. Measured on an ACM-U-Net (NUAA-SIRST 50_50 test,
  4 canvases): IoU -0.0023, nIoU -0.0039, Pd +0.011, Fa +9.8e-6 against per-size padding. Used
  by ``smoke`` runs, where only time matters.

With ``'own'``, the image arrays of a batch have the network's shape (Hn, Wn) and ``mask`` /
``valid`` the canvas shape (Hc, Wc) >= (Hn, Wn).

Normalisation (``dataset_config.normalization``; zero padding is applied after it, so it
pads with the mean):

- ``'dataset'``: grey ``(x - mean) / std`` with the builder's training-split statistics
  (0..255 scale), one channel.
- ``'basicirstd'``: the same with BasicIRSTD's published constants (``BASICIRSTD_MEAN_STD``).
- ``'imagenet_rgb'``: what the official DNA-Net (and ACM) PyTorch code feeds its networks
  (YeRen123455/Infrared-Small-Target-Detection, model/utils.py and train.py):
  ``Image.open(...).convert('RGB')``, torchvision ``ToTensor`` (x / 255)
  and ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``. The builders store grey images, so the grey
  image is replicated to 3 channels and channel c becomes ``(x / 255 - IMAGENET_MEAN[c]) /
  IMAGENET_STD[c]`` (computed as ``(x - 255 m_c) / (255 s_c)``, equal up to float32
  rounding). Use it with ``model.in_channels=3`` for weights imported from the official code
  (``irst_jax.import_weights``). Consequence of storing grey: the official input equals this
  one exactly where the source image's three channels are equal (every NUDT-SIRST image but
  7 of 1,327, ``001109``..``001119``, whose channels differ by up to 7 grey levels; 159 of
  NUAA-SIRST's 427 images, by up to 47 levels in Misc_68 / Misc_72); elsewhere the network
  sees PIL's luma ``convert('L')`` in all three channels instead of the colour channels.

``dataset_config.mean`` / ``dataset_config.std``, when set, replace the grey statistics of
``'dataset'`` and ``'basicirstd'``: a workdir evaluates, exports and resumes with the
statistics it was trained with (stored in its ``normalization.json``), whatever copy of the
dataset is found later.

``dataset_config`` is an ``ml_collections.ConfigDict``; see :func:`default_dataset_config`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from irst_jax.data import builders, canvas

#: Per-dataset grey normalisation published by BasicIRSTD (0..255 scale; XinyiYing/BasicIRSTD,
#: utils.py, get_img_norm_cfg).
BASICIRSTD_MEAN_STD = {
    "nuaa_sirst": (101.06385, 34.61961),
    "nudt_sirst": (107.80905, 33.02275),
    "irstd_1k": (87.46619, 39.71953),
}

#: ImageNet RGB mean / std on the 0..1 scale (torchvision ``Normalize`` of the official DNA-Net
#: and ACM code), used by ``normalization='imagenet_rgb'``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NORMALIZATIONS = ("dataset", "basicirstd", "imagenet_rgb")


def default_dataset_config() -> ml_collections.ConfigDict:
  """The dataset part of a training config, with its defaults."""
  return ml_collections.ConfigDict(dict(
      name="nuaa_sirst",
      builder_config="50_50",
      # TFDS data dir (unset: $TFDS_DATA_DIR or ~/tensorflow_datasets) and the folder of
      # source files in the official layout (unset: $IRST_DATA_DIR/<name>, then
      # ../shared/datasets/<name>); placeholders so that the command line can set them.
      data_dir=ml_collections.config_dict.placeholder(str),
      manual_dir=ml_collections.config_dict.placeholder(str),
      train_split="train",
      eval_split="test",
      normalization="dataset",
      # Grey mean / std (0..255 scale) used instead of those of `normalization` when set
      # (both or neither): how a workdir's stored statistics (normalization.json) are
      # applied to its evaluation, export and resumed training.
      mean=ml_collections.config_dict.placeholder(float),
      std=ml_collections.config_dict.placeholder(float),
      crop_size=256,
      center_on_target_prob=0.5,
      augment=True,
      pad_multiple=32,
      # Whole-image evaluation: at most this many padded shapes per split (see the module
      # docstring; each shape is one compilation of the eval step).
      max_eval_canvases=canvas.MAX_CANVASES,
      eval_network_padding="own",
      shuffle=True,
  ))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training code needs to know about a prepared dataset.

  ``mean``/``std`` are the normalisation actually used (0..255 scale), i.e. the builder's
  train statistics for ``normalization='dataset'``, BasicIRSTD's constants for
  ``normalization='basicirstd'`` (floats), or 255 x ImageNet's per-channel RGB values for
  ``normalization='imagenet_rgb'`` (3-tuples), or ``dataset.mean`` / ``dataset.std`` when
  the config sets them; ``channels`` is the channel count of the images the iterators yield
  (1, or 3 for ``imagenet_rgb``), which must equal the model's ``in_channels``
  (:func:`check_channels`); ``normalization`` is the config's kind.
  """

  name: str
  builder_config: str
  num_examples: dict[str, int]
  mean: float | tuple[float, ...]
  std: float | tuple[float, ...]
  channels: int = 1
  normalization: str = "dataset"


# -- builder -----------------------------------------------------------------------------


def _builder_cls(name: str):
  try:
    return builders.BUILDERS[name]
  except KeyError:
    raise ValueError(
        f"Unknown dataset name {name!r}; known datasets: {sorted(builders.BUILDERS)}."
    ) from None


def load_builder(dataset_config) -> tfds.core.DatasetBuilder:
  """Returns the dataset's TFDS builder, preparing the data (ArrayRecord) if absent.

  Raises:
    ValueError: unknown dataset name.
    irst_jax.data.sources.DatasetNotFoundError: the raw data could not be found/downloaded.
  """
  cls = _builder_cls(dataset_config.name)
  builder = cls(config=dataset_config.builder_config, data_dir=dataset_config.data_dir)
  if not _is_prepared(builder):
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=dataset_config.manual_dir),
    )
  return builder


def _is_prepared(builder) -> bool:
  try:
    return builder.is_prepared()
  except AttributeError:  # Older tfds.
    return builder.data_path.exists()


def _mean_std(dataset_config, builder) -> tuple[Any, Any]:
  """(mean, std) on the 0..255 scale: floats (grey) or 3-tuples (``imagenet_rgb``).

  ``dataset.mean`` / ``dataset.std``, when set, replace the grey statistics of
  ``normalization='dataset'`` or ``'basicirstd'`` (ValueError: only one of them set, a
  non-positive std, or set with ``'imagenet_rgb'``, whose constants are fixed).
  """
  norm = dataset_config.normalization
  mean, std = dataset_config.get("mean"), dataset_config.get("std")
  if mean is not None or std is not None:
    if mean is None or std is None or not float(std) > 0:
      raise ValueError(f"dataset.mean={mean} and dataset.std={std}: expected both set, with "
                       "std > 0 (grey statistics on the 0..255 scale), or neither")
    if norm not in ("dataset", "basicirstd"):
      raise ValueError(f"dataset.mean / dataset.std replace the grey statistics of "
                       f"normalization 'dataset' or 'basicirstd', not {norm!r}; unset them")
    return float(mean), float(std)
  if norm == "imagenet_rgb":
    return (tuple(255.0 * m for m in IMAGENET_MEAN), tuple(255.0 * s for s in IMAGENET_STD))
  if norm == "dataset":
    meta = builder.info.metadata or {}
    if "mean" not in meta or "std" not in meta:
      raise ValueError(
          f"Dataset {dataset_config.name}/{dataset_config.builder_config} stores no mean/std "
          "in its metadata; rebuild it or use normalization='basicirstd'."
      )
    return float(meta["mean"]), float(meta["std"])
  if norm == "basicirstd":
    if dataset_config.name not in BASICIRSTD_MEAN_STD:
      raise ValueError(
          f"normalization='basicirstd' has no published constants for dataset "
          f"{dataset_config.name!r} (known: {sorted(BASICIRSTD_MEAN_STD)}); "
          "use normalization='dataset'."
      )
    return BASICIRSTD_MEAN_STD[dataset_config.name]
  raise ValueError(
      f"Unknown normalization {norm!r}; expected one of {list(_NORMALIZATIONS)}."
  )


def dataset_info(dataset_config) -> DatasetInfo:
  """Returns name, config, split sizes and the normalisation mean/std in use."""
  builder = load_builder(dataset_config)
  mean, std = _mean_std(dataset_config, builder)
  return DatasetInfo(
      name=dataset_config.name,
      builder_config=dataset_config.builder_config,
      num_examples={k: int(v.num_examples) for k, v in builder.info.splits.items()},
      mean=mean,
      std=std,
      channels=int(np.size(mean)),
      normalization=dataset_config.normalization,
  )


def image_channels(dataset_config) -> int:
  """Channels of the images the iterators yield: 3 for ``normalization='imagenet_rgb'``,
  else 1 (unknown normalisations are reported by the iterators)."""
  return 3 if dataset_config.normalization == "imagenet_rgb" else 1


def check_channels(dataset_config, in_channels: int) -> None:
  """Raises ValueError when a model of ``in_channels`` inputs cannot take this pipeline's
  images, naming both values and the override that fixes it."""
  channels = image_channels(dataset_config)
  if int(in_channels) != channels:
    raise ValueError(
        f"model.in_channels={in_channels} but dataset.normalization="
        f"{dataset_config.normalization!r} yields {channels}-channel images; set "
        f"--config.model.in_channels={channels} or choose a normalization with "
        f"{in_channels} channel(s) ('imagenet_rgb': 3, 'dataset' / 'basicirstd': 1).")


def _normalize(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """uint8 grey [H, W, 1] -> float32 [H, W, C] = (x - mean[c]) / std[c], C = mean.size (the
  grey image replicated to every channel)."""
  return (image.astype(np.float32) - mean) / std


def _normalization_arrays(dataset_config, builder) -> tuple[np.ndarray, np.ndarray]:
  mean, std = _mean_std(dataset_config, builder)
  return np.asarray(mean, np.float32).reshape(-1), np.asarray(std, np.float32).reshape(-1)


# -- checks ------------------------------------------------------------------------------


def _check_batch(batch_size: int, num_devices: int) -> int:
  if num_devices <= 0:
    raise ValueError(f"num_devices must be positive, got {num_devices}.")
  if batch_size <= 0 or batch_size % num_devices:
    raise ValueError(
        f"batch_size ({batch_size}) must be a positive multiple of num_devices "
        f"({num_devices})."
    )
  return batch_size // num_devices


def _check_multiple(name: str, value: Any, multiple: int = 32) -> int:
  if not isinstance(value, (int, np.integer)) or value <= 0 or value % multiple:
    raise ValueError(
        f"{name} must be a positive multiple of {multiple}, got {value!r}."
    )
  return int(value)


def max_eval_canvases(dataset_config) -> int:
  """``dataset_config.max_eval_canvases`` (absent from the saved configs of older runs: the
  default, 4), validated.

  Raises:
    ValueError: not an integer >= 1.
  """
  value = dataset_config.get("max_eval_canvases", canvas.MAX_CANVASES)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"dataset.max_eval_canvases must be an integer >= 1 (the number of padded "
                     f"shapes evaluation compiles per split), got {value!r}.")
  return int(value)


EVAL_NETWORK_PADDINGS = ("own", "canvas")


def eval_network_padding(dataset_config) -> str:
  """``dataset_config.eval_network_padding`` ('own' when absent: older saved configs), checked.

  Raises:
    ValueError: not one of ``EVAL_NETWORK_PADDINGS``.
  """
  value = dataset_config.get("eval_network_padding", "own")
  if value not in EVAL_NETWORK_PADDINGS:
    raise ValueError(f"dataset.eval_network_padding={value!r}: expected one of "
                     f"{list(EVAL_NETWORK_PADDINGS)} (where the network runs in evaluation)")
  return value


# -- eval --------------------------------------------------------------------------------


def host_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
  """``np.zeros(shape, dtype)`` at a 64-byte aligned address.

  XLA:CPU takes such a host array in place (zero-copy) as a jit/pmap argument; numpy's own
  allocations are 16-byte aligned, and each is copied (about 0.7 ms for 8 MB on a 2-core
  CPU). Other backends copy to the device either way. Since JAX may then
  share the memory, do not write to the array after passing it to JAX (the eval iterator
  yields a fresh one every batch).
  """
  nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
  buffer = np.zeros(nbytes + 64, np.uint8)
  start = -buffer.ctypes.data % 64
  return buffer[start:start + nbytes].view(dtype).reshape(shape)


def _canvas_indices(source, multiple: int, max_canvases: int
                    ) -> list[tuple[tuple[int, int], list[tuple[tuple[int, int], int]]]]:
  """[((Hc, Wc), [((H, W), record index)] sorted by name)] of a split, canvases sorted; []
  if the split is empty."""
  entries = []
  for i in range(len(source)):
    ex = source[i]
    name = ex["name"]
    name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
    entries.append((tuple(int(v) for v in ex["image"].shape[:2]), name, i))
  if not entries:
    return []
  canvases = canvas.plan_canvases([size for size, _, _ in entries], multiple, max_canvases)
  buckets: dict[tuple[int, int], list[tuple[str, tuple[int, int], int]]] = {}
  for size, name, i in entries:
    buckets.setdefault(canvas.assign(size, canvases), []).append((name, size, i))
  return [(shape, [(size, i) for _, size, i in sorted(buckets[shape])])
          for shape in sorted(buckets)]


_CANVAS_CACHE: dict[tuple[str, str, int, int], list] = {}


def _eval_groups(builder, source, split: str, multiple: int, max_canvases: int,
                 network_padding: str) -> list[tuple[tuple[int, int], tuple[int, int], list[int]]]:
  """[(canvas, network shape, record indices)] of a split in the iterator's order (cached)."""
  key = (str(builder.data_path), split, multiple, max_canvases)
  if key not in _CANVAS_CACHE:
    _CANVAS_CACHE[key] = _canvas_indices(source, multiple, max_canvases)
  groups = []
  for (hc, wc), members in _CANVAS_CACHE[key]:
    if network_padding == "canvas":
      groups.append(((hc, wc), (hc, wc), [i for _, i in members]))
      continue
    by_shape: dict[tuple[int, int], list[int]] = {}
    for size, i in members:
      by_shape.setdefault(canvas.padded_size(size, multiple), []).append(i)
    groups.extend(((hc, wc), shape, by_shape[shape]) for shape in sorted(by_shape))
  return groups


def create_eval_iterator(
    dataset_config, *, split: str, batch_size: int, num_devices: int,
    network_padding: str = "canvas"
) -> Iterator[dict[str, np.ndarray]]:
  """Whole images on at most ``max_eval_canvases`` padded shapes (canvases), see the module doc.

  Yields:
    {'image': f32 [D, b, Hn, Wn, C] normalised, the image at the top-left [:H, :W], 0 on
     padding (C = :func:`image_channels`); (Hn, Wn) is the canvas (Hc, Wc) with
     ``network_padding='canvas'``, the images' own padded size with ``'own'`` (see the
     module docstring; a batch then holds images of one padded size),
     'mask': f32 [D, b, Hc, Wc, 1] in {0, 1},
     'valid': f32 [D, b, Hc, Wc, 1], 1 on the original pixels, 0 on padding/dummies,
     'name': str array [D, b], '' for dummy examples},
    with D = num_devices and b = batch_size // D. All examples of a batch share the canvas
    (Hc, Wc), multiples of ``pad_multiple``. With several JAX processes, every process yields
    the same number of batches of each canvas (its share of the images, the rest dummies).

  Raises:
    ValueError: batch_size not a multiple of num_devices, pad_multiple not a positive
      integer, max_eval_canvases not an integer >= 1, unknown dataset, normalization or
      network_padding.
  """
  if network_padding not in EVAL_NETWORK_PADDINGS:
    raise ValueError(f"network_padding={network_padding!r}: expected one of "
                     f"{list(EVAL_NETWORK_PADDINGS)}")
  per_device = _check_batch(batch_size, num_devices)
  multiple = _check_multiple("pad_multiple", dataset_config.pad_multiple, multiple=1)
  max_canvases = max_eval_canvases(dataset_config)
  builder = load_builder(dataset_config)
  mean, std = _normalization_arrays(dataset_config, builder)
  source = builder.as_data_source(split=split)

  groups = _eval_groups(builder, source, split, multiple, max_canvases, network_padding)
  n_proc, proc = jax.process_count(), jax.process_index()
  global_batch = batch_size * n_proc

  def gen():
    for (hc, wc), (hn, wn), indices in groups:
      for start in range(0, len(indices), global_batch):
        mine = indices[start + proc * batch_size: start + (proc + 1) * batch_size]
        image = host_zeros((batch_size, hn, wn, mean.size), np.float32)
        mask = host_zeros((batch_size, hc, wc, 1), np.float32)
        valid = host_zeros((batch_size, hc, wc, 1), np.float32)
        names = [""] * batch_size
        for j, idx in enumerate(mine):
          ex = source[idx]
          h, w = ex["image"].shape[:2]
          image[j, :h, :w] = _normalize(ex["image"], mean, std)
          mask[j, :h, :w] = ex["mask"] > 0
          valid[j, :h, :w] = 1.0
          name = ex["name"]
          names[j] = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        shape = (num_devices, per_device)
        yield {
            "image": image.reshape(shape + image.shape[1:]),
            "mask": mask.reshape(shape + mask.shape[1:]),
            "valid": valid.reshape(shape + valid.shape[1:]),
            "name": np.asarray(names, dtype=str).reshape(shape),
        }

  return gen()
