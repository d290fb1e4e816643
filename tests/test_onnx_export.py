"""ONNX export (jax2onnx) and the onnxruntime backend: the portable layer forms equal the
training forms, every model's graph equals the JAX model under ONNX Runtime, and the
onnxruntime and jax backends give the same masks and detections.

The conversion tests need the extra irst_jax[onnx] (jax2onnx, onnxruntime) and are skipped
without it; the portable-form tests need neither."""
from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irst_jax import cpu, errors, models
from irst_jax.configs import acm_fpn, acm_unet, cgranet, daea, dnanet, eaau_net
from irst_jax.models import layers
from irst_jax.serving import onnx_export

# ---------------------------------------------------------------------------- portable forms


@pytest.mark.parametrize("shape", [(2, 8, 12, 3), (1, 7, 5, 2)])
def test_portable_max_pools_equal_the_training_forms(shape):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  x[0, :2, :2] = x[0, 0, 0]   # ties
  np.testing.assert_array_equal(layers.max_pool_3x3_s2.portable(x), layers.max_pool_3x3_s2.plain(x))
  np.testing.assert_array_equal(layers.max_pool_2x2.portable(x), layers.max_pool_2x2.plain(x))
  np.testing.assert_array_equal(layers.max_pool_2x2.plain(x), cpu.pooling.max_pool_2x2(x))
  # hand-computed: a 3x3 / s2 / p1 window of a 2x2 image is the whole image
  ramp = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
  assert layers.max_pool_3x3_s2.portable(ramp).tolist() == [[[[3.0]]]]


@pytest.mark.parametrize("sizes,align_corners", [((5, 8), False), ((7, 16), True),
                                                 ((12, 5), False), ((6, 6), True)])
def test_portable_resampling_is_a_matrix_product_equal_to_the_training_form(sizes,
                                                                           align_corners):
  n_in, n_out = sizes
  lo, hi, frac = layers._static_taps(n_in, n_out, align_corners)
  matrix = cpu.resample.interpolation_matrix(lo, hi, frac, n_in)
  assert matrix.shape == (n_out, n_in)
  np.testing.assert_allclose(matrix.sum(1), 1.0, rtol=1e-6)   # each row: two weights summing to 1
  if not align_corners and n_out == 2 * n_in:
    # hand-computed: half-pixel x2 upsampling, output 1 = x[0] / 4 + 3 x[1] / 4 ... and the
    # first output clamps to x[0]
    assert matrix[0, :2].tolist() == [1.0, 0.0] and matrix[2, :2].tolist() == [0.25, 0.75]
  rng = np.random.default_rng(1)
  for axis, shape in ((1, (2, n_in, 3, 4)), (2, (2, 3, n_in, 4))):
    x = rng.normal(size=shape).astype(np.float32)
    want = layers._linear.plain(x, axis, lo, hi, frac)
    got = layers._linear.portable(x, axis, lo, hi, frac)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  with cpu.portable_forms():
    ops = {e.primitive.name for e in jax.make_jaxpr(
        lambda v: layers.resize_bilinear(v, (9, 10), align_corners))(x).jaxpr.eqns}
  assert "dot_general" in ops and "gather" not in ops


def test_portable_batch_norm_is_a_multiply_add_equal_to_the_training_form():
  rng = np.random.default_rng(2)
  x = rng.normal(3.0, 2.0, (2, 4, 4, 3)).astype(np.float32)
  mean, bias = rng.normal(size=(2, 3)).astype(np.float32)
  var, scale = rng.uniform(0.5, 1.5, (2, 3)).astype(np.float32)
  norm = layers._normalize_with_running_statistics
  want = norm.plain(x, mean, var, scale, bias, 1e-5)
  np.testing.assert_allclose(want, (x - mean) / np.sqrt(var + 1e-5) * scale + bias, rtol=1e-5,
                             atol=1e-5)   # by hand
  for got in (norm.portable(x, mean, var, scale, bias, 1e-5),   # numpy statistics
              jax.jit(norm.portable, static_argnums=5)(x, mean, var, scale, bias, 1e-5)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
  with cpu.portable_forms():
    ops = {e.primitive.name for e in jax.make_jaxpr(
        lambda v: norm(v, mean, var, scale, bias, 1e-5))(x).jaxpr.eqns}
  assert {"mul", "add"} <= ops and "sub" not in ops   # statistics folded into constants


def test_portable_forms_select_the_portable_layer_only_inside_the_block():
  def ops(x):   # a fresh function each time: jax caches traces by function
    names = set()

    def walk(jaxpr):
      for e in jaxpr.eqns:
        names.add(e.primitive.name)
        for sub in e.params.values():
          if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
            walk(getattr(sub, "jaxpr", sub))
    walk(jax.make_jaxpr(lambda v: layers.max_pool_3x3_s2(v))(x).jaxpr)
    return names
  x = jnp.zeros((1, 8, 8, 2))
  with cpu.portable_forms():
    inside = ops(x)
  assert "pad" in inside   # -inf padding, then an unpadded pool
  with cpu.plain_forms():
    assert "pad" not in ops(x) and "reduce_window_max" in ops(x)
  assert cpu._mode == "dispatch"   # restored after the blocks


# ------------------------------------------------------------------ max-pool padding fold

def _pad_pool_graph(pad_value, pads, transpose=True):
  """Pad(pad_value, `pads` on NHWC) [-> Transpose to NCHW] -> MaxPool 3x3 / s2 (VALID)."""
  from onnx import TensorProto, helper, numpy_helper
  nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["padded"], mode="constant")]
  if transpose:
    nodes.append(helper.make_node("Transpose", ["padded"], ["nchw"], perm=[0, 3, 1, 2]))
  nodes.append(helper.make_node("MaxPool", ["nchw" if transpose else "padded"], ["y"],
                                kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID"))
  graph = helper.make_graph(
      nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 6, 8, 3])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
      [numpy_helper.from_array(np.asarray(pads, np.int64), "pads"),
       numpy_helper.from_array(np.asarray(pad_value, np.float32), "value")])
  return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
  import onnxruntime as ort
  session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  return session.run(None, {"x": x})[0]


def test_minus_infinity_padding_folds_into_the_max_pool():
  pytest.importorskip("onnx")
  pytest.importorskip("onnxruntime")
  x = np.random.default_rng(3).normal(size=(2, 6, 8, 3)).astype(np.float32) - 5.0   # all < 0
  model = _pad_pool_graph(-np.inf, [0, 1, 1, 0, 0, 1, 1, 0])
  before = _run(model, x)
  assert onnx_export.fold_max_pool_padding(model) == 1
  assert [n.op_type for n in model.graph.node] == ["Transpose", "MaxPool"]
  assert not model.graph.initializer   # the Pad's pads and value went with it
  pool = model.graph.node[1]
  assert {a.name: list(a.ints) for a in pool.attribute if a.name == "pads"} == {
      "pads": [1, 1, 1, 1]}
  assert "auto_pad" not in [a.name for a in pool.attribute]
  after = _run(model, x)
  np.testing.assert_array_equal(after, before)
  # PyTorch's MaxPool2d(3, 2, 1), by hand on the NCHW view: padding never wins
  nchw = np.pad(x.transpose(0, 3, 1, 2), ((0, 0), (0, 0), (1, 1), (1, 1)),
                constant_values=-np.inf)
  want = np.stack([np.stack([nchw[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max((2, 3))
                             for j in range(4)], -1) for i in range(3)], -2)
  np.testing.assert_array_equal(after, want)


@pytest.mark.parametrize("pad_value,pads,transpose", [
    (0.0, [0, 1, 1, 0, 0, 1, 1, 0], True),        # zero padding can win the max
    (-np.inf, [0, 1, 1, 1, 0, 1, 1, 0], True),    # a padded channel is not a pool padding
    (-np.inf, [0, 0, 1, 1, 0, 0, 1, 1], False)])  # already NCHW: folded (control)
def test_only_minus_infinity_spatial_padding_folds(pad_value, pads, transpose):
  pytest.importorskip("onnx")
  pytest.importorskip("onnxruntime")
  model = _pad_pool_graph(pad_value, pads, transpose)
  x = np.random.default_rng(4).normal(size=(1, 6, 8, 3)).astype(np.float32) - 5.0
  before = _run(model, x)
  folded = onnx_export.fold_max_pool_padding(model)
  assert folded == (0 if transpose else 1)
  assert ("Pad" in [n.op_type for n in model.graph.node]) == transpose
  np.testing.assert_array_equal(_run(model, x), before)


# ---------------------------------------------------------------------------- every model

def _tiny(name):
  """A tiny config of each model (same code paths, few channels): conversions take seconds."""
  if name in ("acm_unet", "acm_fpn"):
    config = (acm_unet if name == "acm_unet" else acm_fpn).get_config("nuaa_sirst")
    config.model.update(channels=(4, 8, 8, 16), num_blocks=1)
  elif name == "eaau_net":
    config = eaau_net.get_config("nuaa_sirst")
    config.model.update(channels=(4, 8, 8, 16), num_blocks=1, sa_groups=2)
  elif name == "daea":
    config = daea.get_config("nuaa_sirst")
    config.model.update(channels=(4, 8, 16, 32), num_blocks=1, sa_groups=2)
  elif name == "dnanet":
    config = dnanet.get_config("nuaa_sirst")
    config.model.update(nb_filter=(4, 8, 8, 16, 16), num_blocks=(1, 1, 1, 1))
  else:
    config = cgranet.get_config("nudt_sirst")
    config.model.update(num_blocks=(1, 1, 1, 1), base_width=8, scale=4, stem_width=8,
                        base_planes=8, channels=8)
  return config


def _variables(config, seed=0):
  """Random variables of the model's shapes: kernels scaled by fan-in, BatchNorm statistics
  away from 0 / 1, so every layer changes the output."""
  model = models.create_model(config.model)
  x = jnp.zeros((1, 32, 32, int(config.model.in_channels)))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(path[-1].key)
    if name == "kernel":
      return rng.normal(0.0, np.sqrt(1.0 / max(np.prod(leaf.shape[:-1]), 1)), leaf.shape)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0.0, 0.1, leaf.shape)

  return jax.tree_util.tree_map_with_path(lambda p, v: draw(p, v).astype(np.float32), shapes)


def _images(shape, seed):
  """Grey images on the 0..255 scale with a few bright small targets."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 120.0, shape).astype(np.float32)
  for _ in range(3):
    y, z = rng.integers(2, shape[1] - 4), rng.integers(2, shape[2] - 4)
    x[:, y:y + 3, z:z + 3] = 250.0
  return x


MODELS = ["acm_unet", "acm_fpn", "eaau_net", "daea", "dnanet", "cgranet"]
SIZES = [(32, 32), (64, 96), (96, 64)]


@pytest.mark.parametrize("name", MODELS)
def test_onnx_graph_equals_the_jax_model(name, tmp_path):
  pytest.importorskip("jax2onnx")
  ort = pytest.importorskip("onnxruntime")
  config = _tiny(name)
  variables = _variables(config)
  fn = onnx_export.network(config, variables, mean=100.0, std=40.0)
  reference = jax.jit(fn)   # the training forms (CPU forms on CPU), not the portable ones
  for k, size in enumerate(SIZES):
    path = onnx_export.to_onnx(fn, size, tmp_path / f"{name}_{k}.onnx", name=name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [onnx_export.INPUT_NAME]
    assert session.get_inputs()[0].shape == ["b", size[0], size[1], 1]   # symbolic batch
    x = _images((3,) + size + (1,), seed=k)
    want = np.asarray(reference(x))
    scale = max(1.0, float(np.abs(want).max()))
    assert np.std(want) > 1e-3 * scale   # the test images drive the network
    for batch in (3, 1):   # one graph, two batch sizes
      got = session.run(None, {"images": x[:batch]})[0]
      assert got.shape == (batch,) + size + (1,)
      assert np.abs(got - want[:batch]).max() <= 1e-4 * scale, (name, size, batch)


def test_acm_unet_graph_holds_the_operators_of_pytorch_s_export(tmp_path):
  onnx = pytest.importorskip("onnx")
  pytest.importorskip("jax2onnx")
  config = _tiny("acm_unet")
  fn = onnx_export.network(config, _variables(config), mean=100.0, std=40.0)
  path = onnx_export.to_onnx(fn, (64, 64), tmp_path / "acm_unet.onnx")
  nodes = onnx.load(str(path)).graph.node
  ops = [n.op_type for n in nodes]
  # two transposed convolutions, the stem's padded max pool without a Pad, the head's
  # bilinear upsampling as two matrix products (no gathers of feature maps)
  assert ops.count("ConvTranspose") == 2 and "Pad" not in ops and ops.count("MatMul") == 2
  pools = [n for n in nodes if n.op_type == "MaxPool"]
  assert [[list(a.ints) for a in n.attribute if a.name == "pads"] for n in pools] == [
      [[1, 1, 1, 1]]]


def test_a_construct_the_converter_cannot_express_names_the_layer(tmp_path):
  pytest.importorskip("jax2onnx")

  import flax.linen as nn

  class SingularValues(nn.Module):   # jax2onnx 0.17.1 converts only tiny SVDs
    @nn.compact
    def __call__(self, x):
      return x * jnp.linalg.svd(x[0, :, :, 0])[1][None, :, None, None]

  class Toy(nn.Module):
    @nn.compact
    def __call__(self, x):
      return SingularValues(name="spectrum")(nn.Conv(1, (1, 1), name="conv")(x))

  toy = Toy()
  variables = toy.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(errors.UserError, match=r"jax2onnx cannot convert toy at layer "
                     r"Toy/spectrum \(JAX primitive 'svd'\): NotImplementedError"):
    onnx_export.to_onnx(lambda x: toy.apply(variables, x), (32, 32), tmp_path / "toy.onnx",
                        name="toy")
  # an error while tracing the model code names the model's source line
  config = _tiny("acm_unet")
  fn = onnx_export.network(config, _variables(config), 100.0, 40.0)
  with pytest.raises(errors.UserError, match=r"at acm.py:\d+ in __call__ .*multiples of 16"):
    onnx_export.to_onnx(fn, (40, 40), tmp_path / "acm.onnx", name="acm_unet")


def test_missing_extra_is_one_line_naming_the_extra(monkeypatch):
  real_import = builtins.__import__

  def without_jax2onnx(name, *args, **kwargs):
    if name == "jax2onnx":
      raise ImportError("No module named 'jax2onnx'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", without_jax2onnx)
  with pytest.raises(errors.MissingDependencyError,
                     match=r'need jax2onnx.*pip install "irst_jax\[onnx\]"'):
    onnx_export.require()


# ---------------------------------------------------------------------------- backends

def _gap_threshold(scores):
  """A probability threshold in the middle of a gap of at least 1e-3 between the scores near
  their 97th percentile, so that runtimes equal within 1e-4 give the same mask."""
  values = np.unique(np.concatenate([s.ravel() for s in scores]))
  start = int(0.97 * values.size)
  for k in range(start, values.size - 1):
    if values[k + 1] - values[k] > 1e-3:
      return float(values[k] + values[k + 1]) / 2
  raise AssertionError("no gap in the scores")


def test_export_command_and_backends_give_the_same_masks_and_detections(
    prepared_fake_nuaa, tmp_path):
  pytest.importorskip("jax2onnx")
  pytest.importorskip("onnxruntime")
  from PIL import Image

  from irst_jax import checkpoints
  from irst_jax.serving import detector as detector_lib
  from tests.test_export import ROOT
  from tests.test_export import _variables as export_variables
  from tests.test_main import _tiny_config

  workdir, artifact = tmp_path / "run", tmp_path / "artifact"
  config = _tiny_config(prepared_fake_nuaa)
  config.dataset.pad_multiple = 32
  checkpoints.save_config(workdir, config)
  store = checkpoints.CheckpointStore(workdir)
  store.save_best(3, dict(export_variables(config, 0), step=np.int32(3)), {"IoU": 0.5})
  store.close()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "irst_jax.main", "--mode=export", f"--workdir={workdir}",
             f"--export_dir={artifact}", "--format=jax,onnx", "--onnx_size=64x96"]
  out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  manifest = json.loads((artifact / "manifest.json").read_text())
  assert (manifest["onnx"]["height"], manifest["onnx"]["width"]) == (64, 96)
  assert manifest["onnx"]["opset"] >= 17
  assert manifest["files"]["model.onnx"]["sha256"] == detector_lib.sha256(artifact / "model.onnx")
  assert set(manifest["files"]) == {"model.onnx", "model.jaxexport", "weights.npz"}

  # the same canvas (64 x 96, the graph's) for both runtimes: ACM's global attention pools
  # the canvas
  images = [_images((1, 64, 96), seed)[0].astype(np.uint8) for seed in range(3)]
  images[2] = images[2][:50, :41]   # padded inside the canvas
  jax_detector = detector_lib.Detector.from_export(artifact, backend="jax")
  scores = [p.score for p in jax_detector.predict_batch(images, canvas=(64, 96))]
  threshold = _gap_threshold(scores)
  by_backend = {}
  for backend in detector_lib.BACKENDS:
    detector = detector_lib.Detector.from_export(artifact, backend=backend, threshold=threshold)
    by_backend[backend] = detector.predict_batch(images, canvas=(64, 96))
  for a, b in zip(by_backend["jax"], by_backend["onnxruntime"]):
    np.testing.assert_allclose(a.score, b.score, atol=2e-5)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert [(d.x, d.y, d.area, d.x_min, d.y_max) for d in a.detections] == \
        [(d.x, d.y, d.area, d.x_min, d.y_max) for d in b.detections]
  assert sum(len(p.detections) for p in by_backend["jax"]) > 0
  onnx_tiled = detector_lib.Detector.from_export(artifact, backend="onnxruntime")
  assert onnx_tiled.tile == 64   # frames that fit the graph in one piece, others in tiles
  assert onnx_tiled.tile_size((64, 96)) is None and onnx_tiled.tile_size((40, 70)) is None
  assert onnx_tiled.tile_size((65, 10)) == 64 and onnx_tiled.tile_size((10, 97)) == 64
  # a canvas larger than the graph (images of both orientations): each image scored as on
  # the graph's own canvas
  wide = detector_lib.Detector.from_export(artifact, backend="onnxruntime",
                                           threshold=threshold)
  for a, b in zip(wide.predict_batch(images, canvas=(96, 96)), by_backend["onnxruntime"]):
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.mask, b.mask)
  assert wide.predict_batch([np.zeros((70, 20), np.uint8)])[0].score.shape == (70, 20)  # tiles
  with pytest.raises(ValueError, match=r"image of 70x20 pixels is larger than the ONNX "
                     r"graph's 64x96.*--onnx_size"):
    wide.forward(np.zeros((1, 96, 32, 1), np.float32), np.array([[70, 20]]), np.inf)
  with pytest.raises(ValueError, match=r"tta 'flips_transpose' transposes frames, which the "
                     r"64x96 ONNX graph .* cannot take"):
    detector_lib.Detector.from_export(artifact, backend="onnxruntime", tta="flips_transpose")
  flips = detector_lib.Detector.from_export(artifact, backend="onnxruntime", tta="flips")
  assert flips.predict_batch(images[:1])[0].score.shape == (64, 96)

  # the command: same masks and detections from either backend
  (tmp_path / "in").mkdir()
  for k, image in enumerate(images[:2]):
    Image.fromarray(image).save(tmp_path / "in" / f"frame{k}.png")
  tables = {}
  for backend in detector_lib.BACKENDS:
    command = [sys.executable, "-m", "irst_jax.predict", f"--model={artifact}",
               f"--input={tmp_path / 'in'}", f"--output={tmp_path / backend}",
               f"--backend={backend}", f"--threshold={threshold}"]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    tables[backend] = (tmp_path / backend / "detections.csv").read_text().splitlines()
    for k in range(2):
      mask = np.asarray(Image.open(tmp_path / backend / "masks" / f"frame{k}.png"))
      np.testing.assert_array_equal(mask > 0, by_backend[backend][k].mask)
  rows = [[line.split(",") for line in tables[b]] for b in detector_lib.BACKENDS]
  assert len(rows[0]) == len(rows[1]) > 1
  for a, b in zip(*rows):
    assert a[:9] == b[:9]   # image, id, centroid, area, box; the scores within 1e-4
    assert all(abs(float(x) - float(y)) < 1e-4 for x, y in zip(a[9:], b[9:]) if x[0].isdigit())


def test_onnx_size_is_a_side_or_height_by_width():
  assert onnx_export.parse_size("512") == (512, 512)
  assert onnx_export.parse_size("512x640") == (512, 640)
  assert onnx_export.parse_size(" 256 X 320 ") == (256, 320)
  assert onnx_export.parse_size(None) == (onnx_export.DEFAULT_SIZE,) * 2
  assert onnx_export.parse_size(96) == (96, 96)
  for bad in ("512x", "x640", "512x640x3", "-64", "big"):
    with pytest.raises(errors.UserError, match=f"--onnx_size={bad}: expected a side S or "
                       "HEIGHTxWIDTH"):
      onnx_export.parse_size(bad)
  assert onnx_export.check_size((64, 96), 32) == (64, 96)
  for bad in ((0, 64), (64, 80), (16, 32)):
    with pytest.raises(errors.UserError, match="expected sides that are positive multiples of 32"):
      onnx_export.check_size(bad, 32)


def test_onnx_backend_errors(tmp_path):
  from irst_jax.serving import detector as detector_lib
  (tmp_path / "manifest.json").write_text(json.dumps({"format": detector_lib.FORMAT_NAME,
                                                      "format_version": 2}))
  with pytest.raises(detector_lib.ArtifactError, match="holds no ONNX graph.*--format=onnx"):
    detector_lib.load_onnx(tmp_path)
  with pytest.raises(ValueError, match="backend must be one of"):
    detector_lib.Detector.from_export(tmp_path, backend="tensorrt")


def test_unknown_export_format_is_named(tmp_path):
  from irst_jax.serving import export
  with pytest.raises(errors.UserError, match=r"--format=tflite: expected one or more of jax, onnx"):
    export.export_workdir(tmp_path, formats=["tflite"])
