"""Export a workdir's checkpoint as a self-contained artifact: jax.export module + weights.

    python -m irst_jax.main --mode=export --workdir=runs/acm_unet [--checkpoint=best|latest]
        [--export_dir=runs/acm_unet/export] [--format=jax|onnx|jax,onnx] [--onnx_size=512|HxW]

Artifact (a directory; read by :func:`irst_jax.serving.detector.load_export`, which needs
only jax and numpy):

  model.jaxexport   serialized ``jax.export`` module (StableHLO, lowered for cpu and cuda)
                    of ``forward(weights, images, sizes, logit_threshold) -> (logits,
                    labels)``: weights {'params/...', 'batch_stats/...': array}; images
                    float32 [b, H, W, 1] grey on the 0..255 scale, each image in the top-left
                    (h_i, w_i) corner of the H x W canvas (symbolic b, H, W; 1 <= H, W <=
                    16384); sizes int32 [b, 2], the (h_i, w_i) of each image; logits float32
                    [b, H, W, 1] (meaningful inside each image only); labels int32 [b, H, W],
                    the 8-connected components of ``(logits > logit_threshold) & valid``
                    (components.connected_components, valid = inside the image), 0 = background.
  weights.npz       the variables, flattened with '/'-joined keys.
  manifest.json     format and version, model and full training config, checkpoint (step,
                    metrics), normalisation, threshold, input layout and the divisibility
                    constraint, platforms, library versions, sha256 of both files.
  irst_detector.py  a copy of irst_jax/serving/detector.py: ``from irst_detector import Detector;
                    Detector.from_export(dir)`` without irst_jax installed.
  model.onnx        with ``--format=onnx`` (or ``jax,onnx``): the network as an ONNX graph
                    (:mod:`irst_jax.serving.onnx_export`; the manifest's ``onnx`` section);
                    ``Detector.from_export(dir, backend="onnxruntime")`` runs it. With
                    ``--format=onnx`` alone, model.jaxexport and weights.npz are not written.

Divisibility and padding: every irst_jax model needs H and W divisible by 32 (five stride-2
stages in DNA-Net; ACM-U-Net / FPN need 16). The module treats every pixel outside an image's
(h_i, w_i) as padding, exactly as the evaluation pipeline does (``data/pipeline.py``:
normalise, then zero padding bottom/right, with a validity mask): the padding is set to 0
after normalisation, the canvas is zero-padded further (symbolic arithmetic) to a multiple of
``dataset.pad_multiple`` = 32 when H or W is not one, and the mask is restricted to the valid
pixels before labelling, so no detection includes or connects through padding. Callers
(:meth:`irst_jax.serving.detector.Detector.predict_batch`, ``predict``) pad images of different
sizes on the host to a few canvases, so that one compiled program serves many sizes. The
logits of an image depend on its canvas only through networks with global pooling (ACM's
global attention), as in the evaluation, whose canvases are planned the same way
(:mod:`irst_jax.data.canvas`).
"""
from __future__ import annotations

import json
import pathlib
import platform
import shutil
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
from flax import traverse_util

import irst_jax
from irst_jax import checkpoints, errors, models
from irst_jax.data import pipeline
from irst_jax.evaluation import components, seeds
from irst_jax.serving import detector

DEFAULT_PLATFORMS = ("cpu", "cuda")


def load_workdir(workdir: str | pathlib.Path, checkpoint: str = "best", step: Optional[int] = None,
                 seed_index: Optional[int] = None
                 ) -> tuple[ml_collections.ConfigDict, dict[str, Any], int]:
  """(config, {'params', 'batch_stats'} as numpy, step) of a workdir's checkpoint.

  A run of `train.num_seeds` = N > 1 holds N replicas: the variables are replica
  `seed_index`'s (default: the one of the best IoU in the workdir's best metrics, else 0), and
  the returned config records it as `train.seed_index` (replica i trained with seed
  `train.seed + i`).

  The config's ``dataset.mean`` / ``dataset.std`` are the statistics the run trained with
  (its normalization.json, `checkpoints.with_saved_normalization`), so the export and
  in-framework forward normalise as the training did.

  Args:
    checkpoint: 'best' (best test IoU) or 'latest'.
    step: a step of that kind to restore instead of the newest.

  Raises:
    FileNotFoundError: not a workdir (no config.json), or no such checkpoint (naming the
      directory).
    ValueError: unknown `checkpoint`.
    errors.UserError: `seed_index` outside 0 .. N - 1.
  """
  if checkpoint not in ("best", "latest"):
    raise ValueError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}")
  config = checkpoints.with_saved_normalization(checkpoints.load_config(workdir), workdir)
  store = checkpoints.CheckpointStore(workdir, keep=config.train.keep_checkpoints)
  try:
    manager = store.best if checkpoint == "best" else store.latest
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(f"no {checkpoint} checkpoint{'' if step is None else f' {step}'} "
                              f"in {manager.directory}")
    restored = manager.restore(step)
  finally:
    store.close()
  variables = {k: jax.tree_util.tree_map(np.asarray, restored[k])
               for k in ("params", "batch_stats") if restored.get(k)}
  replicas = int(config.train.get("num_seeds", 1))
  if seed_index is None:
    seed_index = seeds.best_seed(checkpoints.read_best_metrics(workdir)) if replicas > 1 else 0
    seed_index = 0 if seed_index is None or seed_index >= replicas else seed_index
  if not 0 <= seed_index < replicas:
    raise errors.UserError(
        f"--seed_index={seed_index}: the run in {workdir} trained {replicas} "
        f"seed{'s' if replicas > 1 else ''} (train.num_seeds={replicas}); expected 0 .. "
        f"{replicas - 1}")
  if replicas > 1:
    variables = jax.tree_util.tree_map(lambda x: x[seed_index], variables)
  with config.unlocked():
    config.train.seed_index = int(seed_index)
  return config, variables, int(step)


def flatten(variables: dict[str, Any]) -> dict[str, np.ndarray]:
  """{'params': {'a': {'kernel': x}}} -> {'params/a/kernel': x} (numpy)."""
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(variables, sep="/").items()}


def valid_mask(sizes: jax.Array, height, width) -> jax.Array:
  """bool [b, height, width]: True inside each image's top-left (h, w) = sizes[i] corner.

  `sizes` int32 [b, 2]; `height`, `width` may be symbolic dimensions.
  """
  shape = (sizes.shape[0], height, width)
  rows = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
  cols = jax.lax.broadcasted_iota(jnp.int32, shape, 2)
  # lax.slice_in_dim, not sizes[:, 0]: indexing with a symbolic batch would be a gather
  h, w = (jax.lax.slice_in_dim(sizes, k, k + 1, axis=1)[:, :, None] for k in (0, 1))
  return (rows < h) & (cols < w)


def label_components(logits: jax.Array, sizes: jax.Array, logit_threshold) -> jax.Array:
  """int32 [b, H, W] labels of the 8-connected components of ``(logits > t) & valid``.

  `logits` [b, H, W, 1]; `sizes` int32 [b, 2] as in :func:`valid_mask`. Pixels outside each
  image are background, so no component includes padding or connects two targets through it
  (the evaluation's components, ``components.connected_components``, on the valid pixels).
  """
  _, h, w, _ = logits.shape
  mask = (jax.lax.squeeze(logits, (3,)) > logit_threshold) & valid_mask(sizes, h, w)
  return jax.vmap(components.connected_components)(mask)


def make_forward(config: ml_collections.ConfigDict, mean: float, std: float
                 ) -> Callable[[dict, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """The inference function of `config`'s model (traceable with symbolic shapes).

  forward(weights, images, sizes, logit_threshold) -> (logits, labels), see the module
  docstring: images float32 [B, H, W, 1] on the 0..255 scale are normalised
  ``(x - mean) / std``, set to 0 outside each image's (h, w) = sizes[i] (int32 [B, 2]),
  repeated to ``model.in_channels``, zero-padded bottom/right to a multiple of
  ``dataset.pad_multiple`` (32), run through the network in inference mode (BatchNorm
  running statistics, no dropout), cropped back to H x W (``models.final_logits`` under deep
  supervision); labels are :func:`label_components` of the logits.
  """
  model = models.create_model(config.model)
  multiple = int(config.dataset.pad_multiple)
  mean, std = np.float32(mean), np.float32(std)
  in_channels = int(config.model.in_channels)

  def forward(weights, images, sizes, logit_threshold):
    variables = traverse_util.unflatten_dict(weights, sep="/")
    _, h, w, _ = images.shape
    valid = valid_mask(sizes, h, w)[..., None]
    x = jnp.where(valid, (images - mean) / std, jnp.float32(0.0))
    x = jnp.repeat(x, in_channels, axis=-1)
    pad_h = multiple * ((h + multiple - 1) // multiple) - h
    pad_w = multiple * ((w + multiple - 1) // multiple) - w
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    logits = models.final_logits(model.apply(variables, x, train=False))
    # lax.slice: numpy-style cropping with symbolic h, w would be a gather
    logits = jax.lax.slice(logits, (0, 0, 0, 0), (logits.shape[0], h, w, logits.shape[3]))
    return logits, label_components(logits, sizes, logit_threshold)

  return forward


def _manifest(config: ml_collections.ConfigDict, workdir: pathlib.Path, checkpoint: str,
              step: int, info: pipeline.DatasetInfo) -> dict[str, Any]:
  best_metrics = checkpoints.read_best_metrics(workdir)
  return {
      "format": detector.FORMAT_NAME,
      "format_version": detector.FORMAT_VERSION,
      "model": json.loads(config.model.to_json_best_effort()),
      "config": json.loads(config.to_json_best_effort()),
      "checkpoint": {"workdir": str(workdir), "kind": checkpoint, "step": step,
                     "best_metrics": best_metrics if checkpoint == "best" else None,
                     "seed_index": int(config.train.get("seed_index", 0)),
                     "seed": int(config.train.seed) + int(config.train.get("seed_index", 0))},
      "normalization": {"kind": config.dataset.normalization, "mean": info.mean, "std": info.std,
                        "dataset": f"{info.name}/{info.builder_config}",
                        "formula": "(x - mean) / std on the 0..255 grey scale"},
      "threshold": float(config.eval.threshold),
      "input": {
          "layout": "NHWC", "shape": ["b", "h", "w", 1], "dtype": "float32",
          "values": "grey, 0..255 scale, not normalised",
          "sizes": ("int32 [b, 2], the (height, width) of each image, placed in the top-left "
                    "corner of the h x w canvas; the other pixels are padding"),
          "max_side": detector.MAX_SIDE,
          "pad_multiple": int(config.dataset.pad_multiple),
          "divisibility": (f"the network needs H and W divisible by "
                           f"{int(config.dataset.pad_multiple)}; the module sets padding to "
                           "0 after normalisation, zero-pads the canvas bottom/right to that "
                           "multiple and crops the output back"),
      },
      "outputs": {"logits": "float32 [b, h, w, 1], pre-sigmoid (meaningful inside each image)",
                  "labels": "int32 [b, h, w], 8-connected components of (logits > "
                            "logit_threshold (third argument)) inside each image, "
                            "0 = background and padding"},
  }


def workdir_forward(workdir: str | pathlib.Path, checkpoint: str = "best",
                    step: Optional[int] = None, seed_index: Optional[int] = None):
  """(jit-compiled in-framework forward(images, sizes, logit_threshold), manifest) of a
  workdir (the signature of :func:`irst_jax.serving.detector.load_export`'s forward);
  `seed_index`: the replica of a several-seed run (:func:`load_workdir`)."""
  workdir = pathlib.Path(workdir).absolute()
  config, variables, step = load_workdir(workdir, checkpoint, step, seed_index)
  info = pipeline.dataset_info(config.dataset)
  weights = jax.device_put(flatten(variables))
  forward = jax.jit(make_forward(config, info.mean, info.std))
  manifest = _manifest(config, workdir, checkpoint, step, info)
  return (lambda images, sizes, threshold: forward(weights, images, sizes, threshold)), manifest


def workdir_detector(workdir: str | pathlib.Path, checkpoint: str = "best",
                     step: Optional[int] = None, seed_index: Optional[int] = None,
                     **kwargs) -> detector.Detector:
  """The in-framework Detector of a workdir's 'best' or 'latest' (or `step`) checkpoint.

  The network is the jit of the model code (:func:`workdir_forward`), the same function an
  export serialises; the dataset must be prepared (its mean/std normalise the images).
  `kwargs` go to :class:`~irst_jax.serving.detector.Detector` (threshold, uint16_scaling).

  Raises:
    What :func:`load_workdir` and ``pipeline.dataset_info`` raise (no checkpoint, dataset
    not prepared or not found), and Detector's ValueError for a bad threshold or scaling.
  """
  return detector.Detector(*workdir_forward(workdir, checkpoint, step, seed_index), **kwargs)


def export_forward(forward: Callable, weights: dict[str, np.ndarray],
                   platforms: Sequence[str] = DEFAULT_PLATFORMS) -> jax.export.Exported:
  """jax.export of `forward` with symbolic batch, height and width (1 <= H, W <= MAX_SIDE)."""
  scope = jax.export.SymbolicScope([f"h <= {detector.MAX_SIDE}", f"w <= {detector.MAX_SIDE}"])
  b, h, w = jax.export.symbolic_shape("b, h, w", scope=scope)
  specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
  return jax.export.export(jax.jit(forward), platforms=tuple(platforms))(
      specs, jax.ShapeDtypeStruct((b, h, w, 1), jnp.float32),
      jax.ShapeDtypeStruct((b, 2), jnp.int32), jax.ShapeDtypeStruct((), jnp.float32))


#: Artifact formats of :func:`export_workdir` (``--format``).
FORMATS = ("jax", "onnx")


def export_workdir(workdir: str | pathlib.Path, output: Optional[str | pathlib.Path] = None,
                   checkpoint: str = "best", step: Optional[int] = None,
                   platforms: Sequence[str] = DEFAULT_PLATFORMS,
                   seed_index: Optional[int] = None, formats: Sequence[str] = ("jax",),
                   onnx_size: Optional[str | int] = None) -> pathlib.Path:
  """Writes the artifact of a workdir's checkpoint into `output` (default workdir/export):
  replica `seed_index` of a several-seed run (:func:`load_workdir`).

  `formats`: "jax" (model.jaxexport + weights.npz) and/or "onnx" (model.onnx for frames of
  `onnx_size`: a side S, "HxW" or None for ``onnx_export.DEFAULT_SIZE``; needs the extra
  ``irst_jax[onnx]``).

  Returns the artifact directory. Raises what :func:`load_workdir` and
  ``pipeline.dataset_info`` raise (no checkpoint, dataset not prepared/found), a UserError
  for an unknown or empty `formats`, and what ``onnx_export.export_onnx`` raises (package
  missing, a layer the converter cannot express, a bad size), checked before anything is
  written.
  """
  formats = tuple(dict.fromkeys(formats))
  if not formats or any(f not in FORMATS for f in formats):
    raise errors.UserError(f"--format={','.join(formats)}: expected one or more of "
                           f"{', '.join(FORMATS)} (comma-separated)")
  if "onnx" in formats:
    from irst_jax.serving import onnx_export  # the optional extra irst_jax[onnx]
    onnx_export.require()
    onnx_size = onnx_export.parse_size(onnx_size)
  workdir = pathlib.Path(workdir).absolute()
  output = pathlib.Path(output) if output is not None else workdir / "export"
  config, variables, step = load_workdir(workdir, checkpoint, step, seed_index)
  if "onnx" in formats:
    onnx_size = onnx_export.check_size(onnx_size, int(config.dataset.pad_multiple))
  info = pipeline.dataset_info(config.dataset)
  manifest = _manifest(config, workdir, checkpoint, step, info)
  files = []
  output.mkdir(parents=True, exist_ok=True)
  if "jax" in formats:
    weights = flatten(variables)
    exported = export_forward(make_forward(config, info.mean, info.std), weights, platforms)
    (output / detector.MODULE_FILE).write_bytes(exported.serialize())
    np.savez(output / detector.WEIGHTS_FILE, **weights)
    files += [detector.MODULE_FILE, detector.WEIGHTS_FILE]
    manifest.update(platforms=list(exported.platforms),
                    calling_convention_version=exported.calling_convention_version)
  if "onnx" in formats:
    manifest["onnx"] = onnx_export.export_onnx(config, variables, info.mean, info.std,
                                               output / detector.ONNX_FILE, onnx_size)
    files.append(detector.ONNX_FILE)
  shutil.copyfile(detector.__file__, output / "irst_detector.py")
  manifest.update(
      versions={"irst_jax": irst_jax.__version__, "jax": jax.__version__,
                "jaxlib": jaxlib.__version__,
                "flax": flax.__version__, "numpy": np.__version__,
                "python": platform.python_version()},
      files={name: {"sha256": detector.sha256(output / name),
                    "bytes": (output / name).stat().st_size}
             for name in files})
  (output / detector.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
  return output
