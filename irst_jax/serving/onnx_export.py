"""ONNX export of a trained network with jax2onnx (the optional extra ``irst_jax[onnx]``).

    python -m irst_jax.main --mode=export --format=onnx --workdir=runs/acm_unet [--onnx_size=512]

writes ``model.onnx`` into the artifact directory (:mod:`irst_jax.serving.export`, which records
it and its sha256 in the manifest); :meth:`irst_jax.serving.detector.Detector.from_export`
with ``backend="onnxruntime"`` runs it with ONNX Runtime.

The graph (ONNX opset :data:`OPSET`):

  input  ``images``  float32 [b, H, W, 1] (NHWC; for one channel the same memory as NCHW
         [b, 1, H, W]), grey on the 0..255 scale, not normalised; symbolic batch b, fixed
         height H and width W (``--onnx_size=S`` or ``HxW``, multiples of 32).
  output ``logits``  float32 [b, H, W, 1], pre-sigmoid (``models.final_logits`` under deep
         supervision).

It normalises ``(x - mean) * (1 / std)`` with the training statistics, repeats the grey channel to
the model's input channels and runs the network in inference mode (BatchNorm running
statistics, no dropout). The detector pads each image to H x W with the value ``mean``
(which the normalisation maps to exactly 0, the padding of the evaluation and of the
jax.export module) and tiles frames larger than H x W. The sides are fixed: jax2onnx 0.17.1
cannot trace the networks with a symbolic height and width (its flax ``max_pool`` rule keeps
symbolic sides unpooled, its ``jnp.take`` rule fails on symbolic gather indices, and
``jax.image.resize`` refuses symbolic shapes). Scores are those of the network on the H x W
canvas: export the size of the sensor's frames (e.g. ``--onnx_size=512x640``) to get, for
those frames, the scores of the evaluation and of the jax.export module (which pad to a
multiple of 32 only); networks with global pooling (ACM's attention) score a frame padded
into a larger canvas differently.

Layers are traced in their portable forms (:func:`irst_jax.cpu.portable_forms`): the 3x3 /
stride-2 max pool as -inf padding and an unpadded pool, the padding then folded into the ONNX
MaxPool (:func:`fold_max_pool_padding`), and inference-mode BatchNorm as a multiply-add with
constants folded in numpy (fused into the convolution by ONNX Runtime and TensorRT); every
other layer in its plain form (not the XLA:CPU forms), the 4x4 transposed convolution as an
ONNX ConvTranspose. Those forms give the training forms' forward values up to float32
rounding (tests/test_onnx_export.py). ONNX Runtime removes the NHWC <-> NCHW transposes
jax2onnx puts around each convolution (its transpose optimiser); what the optimised graph
keeps, and the speed: experiments/results/benchmark_deploy.md. jax2onnx, onnx and onnxruntime
are imported inside the functions, so importing this module needs none of them.
"""
from __future__ import annotations

import pathlib
import traceback
from typing import Any, Callable, Optional, Sequence

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
#: The side of the exported (square) graph unless --onnx_size says otherwise.
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
  # [1, 1, 1, 1] constants, not scalars: ONNX Runtime broadcasts a rank-0 operand over a
  # tensor with a last axis of 1 one element at a time (50 times slower here); times the
  # reciprocal, since a division is several times slower than a product. The padding
  # (value mean) still normalises to exactly 0.
  mean = np.full((1, 1, 1, 1), mean, np.float32)
  inverse_std = np.float32(1.0) / np.full((1, 1, 1, 1), std, np.float32)

  def forward(images):
    x = (images - mean) * inverse_std
    if in_channels != 1:
      x = jnp.repeat(x, in_channels, axis=-1)
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


def fold_max_pool_padding(model) -> int:
  """Folds each constant -inf ``Pad`` that feeds a ``MaxPool`` (directly or through one
  ``Transpose``) into the pool's ``pads`` attribute, in place; returns how many it folded.

  The portable max pool (:func:`irst_jax.cpu.pooling.max_pool_3x3_s2_padded`) reaches the
  graph as Pad(-inf) -> Transpose(NHWC -> NCHW) -> MaxPool(VALID): jax2onnx's pooling rules
  cannot write a padded MaxPool from an NHWC layer. ONNX MaxPool ignores its padded positions,
  which is what -inf padding does, so the fold is exact; it spares ONNX Runtime a Pad in NCHW
  between two layout reorders (it does not fuse a Pad into a MaxPool itself), and TensorRT
  sees the pool PyTorch's exporter writes. `model`: an ``onnx.ModelProto``.
  """
  from onnx import helper, numpy_helper
  graph = model.graph
  constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  for node in graph.node:
    if node.op_type == "Constant" and node.attribute[0].name == "value":
      constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
  producer = {out: node for node in graph.node for out in node.output}
  consumers: dict[str, list] = {}
  for node in graph.node:
    for name in node.input:
      consumers.setdefault(name, []).append(node)
  graph_outputs = {o.name for o in graph.output}

  def only_consumer(name: str, node) -> bool:
    return name not in graph_outputs and [id(n) for n in consumers.get(name, [])] == [id(node)]

  def attributes(node) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}

  folded, removed, stale = 0, [], set()
  for pool in graph.node:
    pool_attributes = attributes(pool)
    if (pool.op_type != "MaxPool" or len(pool.output) > 1 or any(pool_attributes.get("pads", []))
        or pool_attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
        or pool_attributes.get("ceil_mode", 0)):
      continue
    source = producer.get(pool.input[0])
    permutation = None
    if source is not None and source.op_type == "Transpose" and only_consumer(source.output[0], pool):
      permutation = list(attributes(source)["perm"])
      pad = producer.get(source.input[0])
      if pad is None or not only_consumer(pad.output[0], source):
        continue
    else:
      pad = source
      if pad is None or not only_consumer(pad.output[0], pool):
        continue
    if (pad.op_type != "Pad" or attributes(pad).get("mode", b"constant") != b"constant"
        or len(pad.input) != 3 or pad.input[1] not in constants
        or pad.input[2] not in constants):
      continue
    value = np.asarray(constants[pad.input[2]])
    if value.size != 1 or not np.isneginf(value.reshape(())):
      continue
    rank = len(constants[pad.input[1]]) // 2
    begin, end = constants[pad.input[1]][:rank], constants[pad.input[1]][rank:]
    permutation = permutation or list(range(rank))
    begin, end = [int(begin[a]) for a in permutation], [int(end[a]) for a in permutation]
    if min(begin + end) < 0 or any(begin[:2]) or any(end[:2]):
      continue   # only the spatial axes (2, ...) of the pool's NCHW input may be padded
    if permutation != list(range(rank)):
      source.input[0] = pad.input[0]
      stale.add(source.output[0])   # its recorded shape was the padded one
    else:
      pool.input[0] = pad.input[0]
    for a in [a for a in pool.attribute if a.name in ("auto_pad", "pads")]:
      pool.attribute.remove(a)
    pool.attribute.append(helper.make_attribute("pads", begin[2:] + end[2:]))
    removed.append(pad)
    folded += 1
  for pad in removed:
    graph.node.remove(pad)
  used = {name for node in graph.node for name in node.input}
  orphans = {name for pad in removed for name in pad.input[1:]} - used
  for tensor in [t for t in graph.initializer if t.name in orphans]:
    graph.initializer.remove(tensor)
  for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in orphans]:
    graph.node.remove(node)
  for info in [v for v in graph.value_info if v.name in stale]:
    graph.value_info.remove(info)
  return folded


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
  fold_max_pool_padding(model)
  path.write_bytes(model.SerializeToString())
  return path


def parse_size(text: str | int | Sequence[int] | None) -> tuple[int, int]:
  """The (height, width) of ``--onnx_size``: "S" (a square), "HxW", an int or a pair; None:
  DEFAULT_SIZE square.

  Raises:
    errors.UserError: anything else, one line naming the value.
  """
  if text is None:
    return DEFAULT_SIZE, DEFAULT_SIZE
  if isinstance(text, (int, np.integer)):
    return int(text), int(text)
  if not isinstance(text, str):
    height, width = (int(v) for v in text)
    return height, width
  parts = text.lower().replace(" ", "").split("x")
  if len(parts) in (1, 2) and all(p.isdigit() for p in parts):
    return int(parts[0]), int(parts[-1])
  raise errors.UserError(f"--onnx_size={text}: expected a side S or HEIGHTxWIDTH in pixels "
                         "(e.g. 512 or 512x640)")


def check_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
  """`size` (H, W) as ints.

  Raises:
    errors.UserError: H or W not a positive multiple of `multiple` (the model's 32).
  """
  height, width = (int(v) for v in size)
  if min(height, width) < multiple or height % multiple or width % multiple:
    raise errors.UserError(f"--onnx_size={height}x{width}: expected sides that are positive "
                           f"multiples of {multiple}")
  return height, width


def export_onnx(config: ml_collections.ConfigDict, variables: dict[str, Any], mean: float,
                std: float, path: pathlib.Path,
                size: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)) -> dict[str, Any]:
  """Writes the graph of `config`'s model (module docstring) for frames of `size` = (H, W)
  pixels to `path`; returns the manifest's ``onnx`` section (file, opset, input/output names
  and shapes, height, width, padding value).

  Raises:
    errors.UserError: H or W not a positive multiple of the model's pad multiple (32); what
      :func:`to_onnx` raises.
  """
  height, width = check_size(size, int(config.dataset.pad_multiple))
  to_onnx(network(config, variables, mean, std), (height, width), path,
          name=config.model.name)
  return {
      "file": pathlib.Path(path).name, "opset": OPSET,
      "input": {"name": INPUT_NAME, "shape": ["b", height, width, 1], "dtype": "float32",
                "layout": "NHWC (one channel: also NCHW [b, 1, H, W])",
                "values": "grey, 0..255 scale, not normalised; pad with normalization.mean"},
      "output": {"name": OUTPUT_NAME, "shape": ["b", height, width, 1], "dtype": "float32",
                 "values": "logits (pre-sigmoid)"},
      "height": height, "width": width, "pad_value": float(mean),
      "converter": "jax2onnx " + _version("jax2onnx"),
  }


def _version(package: str) -> str:
  from importlib import metadata
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return "unknown"
