"""ONNX export of a trained network with jax2onnx (the optional extra ``irst_jax[onnx]``).

    python -m irst_jax.main --mode=export --format=onnx --workdir=runs/acm_unet [--onnx_size=512]

writes ``model.onnx`` into the artifact directory (:mod:`irst_jax.serving.export`, which records
it and its sha256 in the manifest); :meth:`irst_jax.serving.detector.Detector.from_export`
with ``backend="onnxruntime"`` runs it with ONNX Runtime.

The graph (ONNX opset :data:`OPSET`):

  input  ``images``  float32 [b, S, S, 1] (NHWC; for one channel the same memory as NCHW
         [b, 1, S, S]), grey on the 0..255 scale, not normalised; symbolic batch b, fixed
         side S (``--onnx_size``, a multiple of 32).
  output ``logits``  float32 [b, S, S, 1], pre-sigmoid (``models.final_logits`` under deep
         supervision).

It normalises ``(x - mean) / std`` with the training statistics, repeats the grey channel to
the model's input channels and runs the network in inference mode (BatchNorm running
statistics, no dropout). The detector pads each image to S x S with the value ``mean``
(which the normalisation maps to exactly 0, the padding of the evaluation and of the
jax.export module) and tiles frames with a side above S. The side is fixed: jax2onnx 0.17.1
cannot trace the networks with symbolic height and width (its ``jnp.take`` rule fails on
symbolic gather indices, its flax ``max_pool`` rule keeps symbolic sides unpooled, and
``jax.image.resize`` refuses symbolic shapes).

Layers are traced in their portable forms (:func:`irst_jax.cpu.portable_forms`): the max pools
as strided slices / reshapes and the 4x4 transposed convolution as a 3x3 convolution to its
four output phases followed by depth-to-space, whose kernel is rearranged once, in numpy; every
other layer in its plain form (not the XLA:CPU forms). Those forms give the training forms'
forward values (tests/test_onnx_export.py). jax2onnx and onnxruntime are imported inside the
functions, so importing this module needs neither.
"""
from __future__ import annotations

import pathlib
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from irst_jax import cpu, errors, models

#: ONNX opset of the graph (jax2onnx 0.17.1 writes ReduceMean with its axes as an input, the
#: form of opset 18).
OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
#: The side of the exported graph unless --onnx_size says otherwise.
DEFAULT_SIZE = 512
_INSTALL = 'pip install "irst_jax[onnx]"'


def require(*names: str) -> None:
  """Checks that the ONNX packages `names` (default both jax2onnx and onnxruntime) import.

  Raises:
    errors.MissingDependencyError: one line naming the missing package and the extra.
  """
  for name in names or ("jax2onnx", "onnxruntime"):
    try:
      __import__(name)
    except ImportError as e:
      raise errors.MissingDependencyError(
          f"ONNX export and the onnxruntime backend need {name}, which is not installed "
          f"({e}): {_INSTALL}") from e


def network(config: ml_collections.ConfigDict, variables: dict[str, Any], mean: float,
            std: float) -> Callable[[jax.Array], jax.Array]:
  """The function the graph holds: images float32 [b, H, W, 1] (0..255) -> logits
  [b, H, W, 1]; normalisation, channel repeat and inference-mode network, with `variables`
  ({'params', 'batch_stats'}, numpy) closed over as constants. H, W multiples of 32."""
  model = models.create_model(config.model)
  in_channels = int(config.model.in_channels)
  mean, std = np.float32(mean), np.float32(std)

  def forward(images):
    x = jnp.repeat((images - mean) / std, in_channels, axis=-1)
    return models.final_logits(model.apply(variables, x, train=False))

  return forward


def _model_frame(error: BaseException) -> str:
  """'file:line in function' of the innermost frame of irst_jax/models in `error`'s traceback
  (the layer being traced when the converter failed), or ''."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if "irst_jax/models/" in f.filename.replace("\\", "/")]
  if not frames:
    return ""
  f = frames[-1]
  return f"{pathlib.Path(f.filename).name}:{f.lineno} in {f.name} ({f.line})"


def _failed_primitive(error: BaseException) -> str:
  """The JAX primitive a jax2onnx lowering error names ('' if none)."""
  text = str(error)
  for marker in ("primitive '", "primitive: ", "No plugin registered for primitive"):
    if marker in text:
      return text.split(marker, 1)[1].split("'")[0].split()[0].strip(":'\"")
  return ""


def to_onnx(fn: Callable[[jax.Array], jax.Array], size: tuple[int, int], path: pathlib.Path,
            name: str = "irst_jax") -> pathlib.Path:
  """Converts `fn` (images [b, H, W, 1] -> logits) to an ONNX file at `path` with jax2onnx:
  symbolic batch, fixed (H, W) = `size`, layers in their portable forms.

  Raises:
    errors.MissingDependencyError: jax2onnx is not installed.
    errors.UserError: the converter cannot express a construct of the network; the message
      names the layer (model source line being traced, or the JAX primitive) and the cause.
  """
  require("jax2onnx")
  import jax2onnx  # the optional extra irst_jax[onnx]
  height, width = (int(s) for s in size)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  spec = jax.ShapeDtypeStruct(("b", height, width, 1), jnp.float32)
  try:
    with cpu.portable_forms():
      model = jax2onnx.to_onnx(fn, [spec], model_name=name, opset=OPSET,
                               input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
  except Exception as e:  # the converter raises many kinds (NotImplementedError, TypeError, ...)
    where = _model_frame(e) or (f"JAX primitive {_failed_primitive(e)!r}"
                                if _failed_primitive(e) else "")
    raise errors.UserError(
        f"jax2onnx cannot convert {name}"
        f"{f' at {where}' if where else ''}: {type(e).__name__}: "
        f"{errors.one_line(e)[:300]}") from e
  path.write_bytes(model.SerializeToString())
  return path


def export_onnx(config: ml_collections.ConfigDict, variables: dict[str, Any], mean: float,
                std: float, path: pathlib.Path, side: int = DEFAULT_SIZE) -> dict[str, Any]:
  """Writes the graph of `config`'s model (module docstring) to `path`; returns the manifest's
  ``onnx`` section (file, opset, input/output names and shapes, side, padding value).

  Raises:
    errors.UserError: `side` not a positive multiple of the model's pad multiple (32); what
      :func:`to_onnx` raises.
  """
  multiple = int(config.dataset.pad_multiple)
  if side < multiple or side % multiple:
    raise errors.UserError(f"--onnx_size={side}: expected a positive multiple of {multiple}")
  to_onnx(network(config, variables, mean, std), (side, side), path, name=config.model.name)
  return {
      "file": pathlib.Path(path).name, "opset": OPSET,
      "input": {"name": INPUT_NAME, "shape": ["b", side, side, 1], "dtype": "float32",
                "layout": "NHWC (one channel: also NCHW [b, 1, S, S])",
                "values": "grey, 0..255 scale, not normalised; pad with normalization.mean"},
      "output": {"name": OUTPUT_NAME, "shape": ["b", side, side, 1], "dtype": "float32",
                 "values": "logits (pre-sigmoid)"},
      "side": side, "pad_value": float(mean),
      "converter": "jax2onnx " + _version("jax2onnx"),
  }


def _version(package: str) -> str:
  from importlib import metadata
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return "unknown"
