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

It normalises ``(x - mean) * (1 / std)`` with the training statistics, repeats the grey channel to
the model's input channels and runs the network in inference mode (BatchNorm running
statistics, no dropout). The detector pads each image to S x S with the value ``mean``
(which the normalisation maps to exactly 0, the padding of the evaluation and of the
jax.export module) and tiles frames with a side above S. The side is fixed: jax2onnx 0.17.1
cannot trace the networks with symbolic height and width (its ``jnp.take`` rule fails on
symbolic gather indices, its flax ``max_pool`` rule keeps symbolic sides unpooled, and
``jax.image.resize`` refuses symbolic shapes).

Layers are traced in their portable forms (:func:`irst_jax.cpu.portable_forms`): the 3x3 /
stride-2 max pool as -inf padding and an unpadded pool (one ONNX MaxPool), the 4x4 transposed
convolution as a 3x3 convolution to its four output phases followed by depth-to-space (its
kernel rearranged once, in numpy), inference-mode BatchNorm as a multiply-add with constants
folded in numpy (fused into the convolution by ONNX Runtime and TensorRT); every other layer
in its plain form (not the XLA:CPU forms). Those forms give the training forms' forward values
up to float32 rounding (tests/test_onnx_export.py). ONNX Runtime removes the NHWC <-> NCHW
transposes jax2onnx puts around each convolution (its transpose optimiser; the benchmark's
optimised graph keeps 9 of 105 for ACM-U-Net). jax2onnx and onnxruntime are imported inside the
functions, so importing this module needs neither.
"""
from __future__ import annotations

import pathlib
import traceback
from typing import Any, Callable, Optional

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

  inverse_std = np.float32(1.0) / std

  def forward(images):
    # times the reciprocal: a division is several times slower in ONNX Runtime; the padding
    # (value mean) still normalises to exactly 0
    x = jnp.repeat((images - mean) * inverse_std, in_channels, axis=-1)
    return models.final_logits(model.apply(variables, x, train=False))

  return forward


def _failed_equation(error: BaseException):
  """The JAX equation jax2onnx was lowering when it raised `error` (from its traceback), or
  None for an error raised while tracing."""
  tb, equation = error.__traceback__, None
  while tb is not None:
    candidate = tb.tb_frame.f_locals.get("eqn")
    if hasattr(candidate, "primitive") and hasattr(candidate, "params"):
      equation = candidate
    tb = tb.tb_next
  return equation


def _module_path(fn: Callable, size: tuple[int, int], primitive: str) -> str:
  """The Flax module path ('ACMUNet/backbone/stem/conv1') of the first `primitive` equation of
  `fn`, traced again with every module call in a `jax.named_scope` of its name ('' if none)."""
  import flax.linen as nn

  def scoped(next_fun, args, kwargs, context):
    with jax.named_scope(context.module.name or type(context.module).__name__):
      return next_fun(*args, **kwargs)

  def names(equation) -> list[str]:
    return [getattr(scope, "name", str(scope)) for scope in equation.source_info.name_stack.stack]

  def find(jaxpr, outer: list[str]) -> Optional[list[str]]:
    for equation in jaxpr.eqns:
      if equation.primitive.name == primitive:
        return outer + names(equation)
      for value in equation.params.values():
        for sub in (value if isinstance(value, (tuple, list)) else (value,)):
          sub = getattr(sub, "jaxpr", sub)
          found = find(sub, outer + names(equation)) if hasattr(sub, "eqns") else None
          if found is not None:
            return found
    return None

  with nn.intercept_methods(scoped), cpu.portable_forms():
    jaxpr = jax.make_jaxpr(lambda x: fn(x))(jax.ShapeDtypeStruct((1, *size, 1), jnp.float32))
  found = find(jaxpr.jaxpr, []) or []
  # a module call may enter its scope twice (method wrappers): keep one of each
  return "/".join(n for k, n in enumerate(found) if k == 0 or n != found[k - 1])


def _failed_layer(error: BaseException, fn: Callable, size: tuple[int, int]) -> str:
  """Where in the network the converter failed: "layer PATH (JAX primitive 'P')" for a
  lowering error (PATH the Flax module path of the equation being converted), 'FILE:LINE in
  FUNCTION (CODE)' for an error raised while tracing the model code (its innermost frame in
  irst_jax/models), or ''."""
  equation = _failed_equation(error)
  if equation is not None:
    name = equation.primitive.name
    try:
      path = _module_path(fn, size, name)
    except Exception:  # the description of the error must not fail
      path = ""
    return f"layer {path} (JAX primitive {name!r})" if path else f"JAX primitive {name!r}"
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if "irst_jax/models/" in f.filename.replace("\\", "/")]
  if not frames:
    return ""
  f = frames[-1]
  return f"{pathlib.Path(f.filename).name}:{f.lineno} in {f.name} ({f.line})"


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
    where = _failed_layer(e, fn, (height, width))
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
