"""Exported artifact: equal to in-framework inference, self-contained, checked on load."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import measure

from irst_jax import checkpoints, models
from irst_jax.cpu import convolution as cpu_convolution
from irst_jax.data import pipeline
from irst_jax.evaluation import components
from irst_jax.models import layers
from irst_jax.serving import export
from irst_jax.serving.detector import (
  ArtifactError,
  Detector,
  IncompatibleArtifactError,
  find_detections,
  to_grey,
)
from tests.test_main import _tiny_config  # the tiny ACM-U-Net of the main-job tests

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: Image sizes shared by the export and predict tests (each size / batch compiles once).
SIZES = [(2, 20, 45), (1, 33, 64)]
_CACHE: dict = {}


def _variables(config, seed):
  """Random variables of the model's shapes (jax.eval_shape: no slow init run): He-normal
  kernels, small biases, BatchNorm scales and running statistics away from 0 / 1."""
  model = models.create_model(config.model)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(path[-1].key)
    if name == "kernel":
      return rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0.0, 0.1, leaf.shape)

  return jax.tree_util.tree_map_with_path(lambda p, x: draw(p, x).astype(np.float32), shapes)


def shared(tmp_path_factory, prepared):
  """(workdir, artifact dir, config, best variables) built once for the export/predict tests:
  a workdir with a best (step 3) and a latest (step 5) checkpoint of a tiny ACM-U-Net,
  exported by the command `python -m irst_jax.main --mode=export`."""
  if "workdir" not in _CACHE:
    workdir = tmp_path_factory.mktemp("export") / "run"
    config = _tiny_config(prepared)
    config.dataset.pad_multiple = 32   # the default, which the export tests check
    checkpoints.save_config(workdir, config)
    best, latest = _variables(config, 0), _variables(config, 1)
    store = checkpoints.CheckpointStore(workdir)
    store.save_best(3, dict(best, step=np.int32(3)), {"IoU": 0.5})
    store.save_latest(5, dict(latest, step=np.int32(5)))
    store.close()
    artifact = workdir.parent / "artifact"
    command = [sys.executable, "-m", "irst_jax.main", "--mode=export", f"--workdir={workdir}",
               f"--export_dir={artifact}"]
    out = subprocess.run(command, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"exported the best checkpoint of {workdir} to {artifact}" in out.stdout
    _CACHE.update(workdir=workdir, artifact=artifact, config=config, best=best, latest=latest)
  return _CACHE["workdir"], _CACHE["artifact"], _CACHE["config"], _CACHE["best"]


def exported_detector(tmp_path_factory, prepared) -> Detector:
  """One Detector.from_export shared by the tests (its jit cache too)."""
  if "detector" not in _CACHE:
    _CACHE["detector"] = Detector.from_export(shared(tmp_path_factory, prepared)[1])
  return _CACHE["detector"]


@pytest.fixture
def setup(tmp_path_factory, prepared_fake_nuaa):
  return shared(tmp_path_factory, prepared_fake_nuaa)


@pytest.fixture
def exported(tmp_path_factory, prepared_fake_nuaa):
  return exported_detector(tmp_path_factory, prepared_fake_nuaa)


def _images(b, h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, h, w), dtype=np.uint8)


def _eval_logits(config, variables, images, canvas=None):
  """Logits as the evaluation computes them: pipeline normalisation, zero padding to a
  multiple of 32 (or to `canvas`), model.apply, crop (written independently of
  export.make_forward)."""
  info = pipeline.dataset_info(config.dataset)
  b, h, w = images.shape
  hp, wp = canvas or (-(-h // 32) * 32, -(-w // 32) * 32)
  x = np.zeros((b, hp, wp, 1), np.float32)
  x[:, :h, :w, 0] = (images.astype(np.float32) - np.float32(info.mean)) / np.float32(info.std)
  model = models.create_model(config.model)
  return np.asarray(model.apply(variables, x, train=False))[:, :h, :w, 0]


def test_exported_equals_in_framework_on_several_sizes(setup, exported):
  workdir, _, config, best = setup
  in_framework = export.workdir_detector(workdir)
  for b, h, w in SIZES:
    images = _images(b, h, w)
    ours, theirs = exported.predict_batch(list(images)), in_framework.predict_batch(list(images))
    for p, q in zip(ours, theirs):
      assert p.score.shape == (h, w)
      np.testing.assert_allclose(p.score, q.score, atol=1e-5)
      np.testing.assert_array_equal(p.mask, q.mask)
  # ... and both equal the evaluation's own computation (first size)
  images = _images(*SIZES[0])
  logits = _eval_logits(config, best, images)
  for p, lg in zip(exported.predict_batch(list(images)), logits):
    np.testing.assert_allclose(p.score, 1 / (1 + np.exp(-lg.astype(np.float64))), atol=1e-5)
    np.testing.assert_array_equal(p.mask, lg > 0)


def test_detections_are_the_components_the_evaluation_counts(exported):
  b, h, w = SIZES[0]
  images = _images(b, h, w, seed=1)
  first = exported.predict_batch(list(images))
  # a threshold giving several components on the untrained network
  detector = Detector(exported.forward, exported.manifest,
                      threshold=float(np.quantile(first[0].score, 0.9)))
  for p in detector.predict_batch(list(images)):
    np.testing.assert_array_equal(p.mask, p.score > detector.threshold)
    labels = measure.label(p.mask, connectivity=2)
    regions = measure.regionprops(labels, intensity_image=p.score)
    assert len(regions) >= 2 and len(p.detections) == len(regions)
    # same components as components.connected_components (the evaluation's Pd/Fa)
    ours = np.asarray(components.connected_components(jnp.asarray(p.mask)))
    assert len(np.unique(ours[ours > 0])) == len(regions)
    for d, r in zip(p.detections, regions):  # both in raster order of the first pixel
      assert d.area == r.area
      np.testing.assert_allclose([d.y, d.x], r.centroid, atol=1e-9)
      assert (d.y_min, d.x_min, d.y_max + 1, d.x_max + 1) == tuple(r.bbox)
      np.testing.assert_allclose([d.peak_score, d.mean_score],
                                 [r.intensity_max, r.intensity_mean], rtol=1e-6)


def test_components_never_connect_through_padding_by_hand():
  # two canvases 4 x 6: image 0 is 3 x 4 (row 3 and columns 4, 5 are padding), image 1 fills
  # its canvas. Logits are high at (0, 3) and (2, 3), which touch only through (1, 4), and at
  # (3, 0).
  logits = np.full((2, 4, 6, 1), -5.0, np.float32)
  for r, c in [(0, 3), (2, 3), (1, 4), (3, 0)]:
    logits[:, r, c] = 5.0
  sizes = jnp.asarray([[3, 4], [4, 6]], jnp.int32)
  valid = np.asarray(export.valid_mask(sizes, 4, 6))
  np.testing.assert_array_equal(valid[0], np.pad(np.ones((3, 4), bool), ((0, 1), (0, 2))))
  assert valid[1].all()
  labels = np.asarray(export.label_components(jnp.asarray(logits), sizes, 0.0))
  expected = np.zeros((2, 4, 6), np.int32)
  expected[0, 0, 3] = 4          # label = raster index (row * 6 + col) of the first pixel + 1
  expected[0, 2, 3] = 16         # a second target: the bridge (1, 4) is padding
  expected[1, 0, 3] = expected[1, 1, 4] = expected[1, 2, 3] = 4   # one target through (1, 4)
  expected[1, 3, 0] = 19
  np.testing.assert_array_equal(labels, expected)


def test_padding_stays_out_of_the_exported_labels(exported):
  """The module's labels equal the components of the image's own mask, at a threshold where
  the network's output on the padding would join some of them."""
  images = _images(2, 20, 45, seed=10).astype(np.float32)
  batch = np.zeros((2, 32, 64, 1), np.float32)   # the canvas and batch of SIZES[0]
  batch[:, :20, :45, 0] = images
  sizes = np.array([[20, 45], [20, 45]], np.int32)
  logits = np.asarray(exported.forward(batch, sizes, np.float32(0.0))[0])[0, ..., 0]
  threshold = np.float32(np.quantile(logits, 0.5))
  through_padding = measure.label(logits > threshold, connectivity=2)[:20, :45]
  own = measure.label(logits[:20, :45] > threshold, connectivity=2)
  assert len(np.unique(through_padding[through_padding > 0])) < own.max()  # padding joins some
  labels = np.asarray(exported.forward(batch, sizes, threshold)[1])[0]
  assert not labels[20:].any() and not labels[:, 45:].any()
  inside = labels[:20, :45]
  np.testing.assert_array_equal(inside > 0, own > 0)
  pairs = {(a, b) for a, b in zip(inside[own > 0], own[own > 0])}   # the same partition
  assert len(pairs) == own.max() == len(np.unique(inside[inside > 0]))


def test_mixed_sizes_batch_slots_and_canvases(setup, exported):
  _, _, config, best = setup
  shapes = []

  def recording(images, sizes, threshold):
    shapes.append((images.shape, sizes.tolist()))
    return exported.forward(images, sizes, threshold)

  detector = Detector(recording, exported.manifest)
  a = _images(1, 20, 45, seed=3)[0]
  b = _images(1, 17, 30, seed=4)[0]
  ab, ba = detector.predict_batch([a, b]), detector.predict_batch([b, a])
  alone = detector.predict_batch([a], batch_size=2)   # completed with a dummy image
  # default canvas: the smallest multiple of 32 holding both; dummies are 1 x 1
  assert shapes == [((2, 32, 64, 1), [[20, 45], [17, 30]]), ((2, 32, 64, 1), [[17, 30], [20, 45]]),
                    ((2, 32, 64, 1), [[20, 45], [1, 1]])]
  for p in (ba[1], alone[0]):   # bitwise equal in every batch slot, beside any other image
    np.testing.assert_array_equal(p.score, ab[0].score)
    np.testing.assert_array_equal(p.mask, ab[0].mask)
    assert p.detections == ab[0].detections
  np.testing.assert_array_equal(ba[0].score, ab[1].score)
  assert ab[0].score.shape == (20, 45) and ab[1].score.shape == (17, 30)
  # b on the 32 x 64 canvas is the evaluation's b zero-padded (after normalisation) to it
  logits = _eval_logits(config, best, b[None], canvas=(32, 64))[0]
  np.testing.assert_allclose(ab[1].score, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-5)
  np.testing.assert_array_equal(ab[1].mask, logits > 0)
  for kwargs, match in [(dict(canvas=(32, 32)), "canvas 32x32 does not hold an image of 20x45"),
                        (dict(batch_size=1), "2 images do not fit in a batch of 1"),
                        (dict(canvas=(0, 64)), "canvas must be")]:
    with pytest.raises(ValueError, match=match):
      detector.predict_batch([a, b], **kwargs)
  assert detector.predict_batch([]) == [] and len(shapes) == 3


def test_symbolic_shapes_lower_to_slices_not_gathers():
  """The module takes any H, W, and numpy-style slicing of arrays with symbolic shapes lowers
  to gathers (the stride-2 max pool and shortcut, the FCN head's channel slice, the crop and
  the components' neighbourhood: ACM-U-Net 25 instead of 18 CPU ms an image); these use
  lax.slice, so the exported module has the gathers of the static-shape program only."""
  rng = np.random.default_rng(0)
  nhwc = ("NHWC", "HWIO", "NHWC")
  k1, k3 = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(1, 1, 4, 8), (3, 3, 4, 4)])
  cases = {
      "max pool": layers.max_pool_3x3_s2,
      "strided 1x1": lambda x: cpu_convolution.conv_general_dilated(
          x, k1, (2, 2), ((0, 0), (0, 0)), dimension_numbers=nhwc),
      "narrow 3x3": lambda x: cpu_convolution.conv_general_dilated(
          x, k3, (1, 1), ((1, 1), (1, 1)), dimension_numbers=nhwc),
      "labels": lambda x: export.label_components(
          jax.lax.slice_in_dim(x, 0, 1, axis=3), jnp.full((x.shape[0], 2), 5, jnp.int32), 0.0),
  }
  scope = jax.export.SymbolicScope(["h <= 16384", "w <= 16384"])   # as export_forward's
  b, h, w = jax.export.symbolic_shape("b, h, w", scope=scope)
  x = rng.normal(size=(2, 8, 12, 4)).astype(np.float32)
  for name, fn in cases.items():
    exported = jax.export.export(jax.jit(fn))(jax.ShapeDtypeStruct((b, h, w, 4), jnp.float32))
    static = jax.jit(fn).lower(x).as_text()
    gathers = [len(re.findall(r"stablehlo\.(?:dynamic_)?gather", text))
               for text in (exported.mlir_module(), static)]
    assert gathers[0] == gathers[1] and (gathers[1] == 0 or name == "labels"), (name, gathers)
    np.testing.assert_allclose(exported.call(x), jax.jit(fn)(x), rtol=1e-6, atol=1e-6)


def test_find_detections_by_hand():
  labels = np.zeros((5, 6), np.int32)
  labels[0, 4:6] = 5          # a 2-pixel component whose first pixel is (0, 4)
  labels[2:4, 1] = 13         # a vertical pair, first pixel (2, 1)
  labels[3, 2] = 13
  score = np.linspace(0.0, 1.0, 30).reshape(5, 6)
  a, b = find_detections(labels, score)
  assert (a.target_id, a.area, a.x, a.y, a.x_min, a.y_min, a.x_max, a.y_max) == (
      1, 2, 4.5, 0.0, 4, 0, 5, 0)
  assert (b.target_id, b.area, b.x_min, b.y_min, b.x_max, b.y_max) == (2, 3, 1, 2, 2, 3)
  np.testing.assert_allclose([b.x, b.y], [4 / 3, 8 / 3])
  np.testing.assert_allclose([b.peak_score, b.mean_score],
                             [score[3, 2], (score[2, 1] + score[3, 1] + score[3, 2]) / 3])
  assert find_detections(np.zeros((3, 3), np.int32), np.zeros((3, 3))) == []


def test_to_grey_matches_pil_and_scales_16_bit():
  rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
  expected = np.asarray(Image.fromarray(rgb).convert("L"), np.float32)
  np.testing.assert_array_equal(to_grey(rgb), expected)
  rgba = np.concatenate([rgb, np.zeros((7, 9, 1), np.uint8)], axis=-1)
  np.testing.assert_array_equal(to_grey(rgba), expected)
  x16 = np.array([[0, 257, 65535]], np.uint16)
  np.testing.assert_allclose(to_grey(x16), [[0.0, 1.0, 255.0]], atol=1e-5)
  np.testing.assert_allclose(to_grey(np.array([[1000, 1100, 1200]], np.uint16), "min_max"),
                             [[0.0, 127.5, 255.0]], atol=1e-5)
  np.testing.assert_array_equal(to_grey(np.array([[True, False]])), [[255.0, 0.0]])
  for bad, match in [(np.zeros((4, 4, 5)), "shape"), (np.zeros((0, 3)), "empty"),
                     (np.array([[np.nan]]), "NaN"), (np.zeros((2, 2), complex), "dtype")]:
    with pytest.raises(ValueError, match=match):
      to_grey(bad)


def test_manifest_and_checkpoint_choice(setup):
  workdir, artifact, config, best = setup
  assert sorted(p.name for p in pathlib.Path(artifact).iterdir()) == [
      "irst_detector.py", "manifest.json", "model.jaxexport", "weights.npz"]
  manifest = json.loads((artifact / "manifest.json").read_text())
  info = pipeline.dataset_info(config.dataset)
  assert manifest["format_version"] == 2 and manifest["model"]["name"] == "acm_unet"
  assert manifest["checkpoint"]["step"] == 3 and manifest["checkpoint"]["kind"] == "best"
  assert manifest["normalization"]["mean"] == info.mean and manifest["threshold"] == 0.5
  assert manifest["input"]["shape"] == ["b", "h", "w", 1] and "32" in manifest["input"]["divisibility"]
  assert manifest["input"]["pad_multiple"] == 32 and "int32 [b, 2]" in manifest["input"]["sizes"]
  assert set(manifest["platforms"]) == {"cpu", "cuda"} and manifest["versions"]["jax"] == jax.__version__
  expected = export.flatten(best)
  with np.load(artifact / "weights.npz") as weights:
    assert sorted(weights.files) == sorted(expected)
    for key in weights.files:
      np.testing.assert_array_equal(weights[key], expected[key])
  _, variables, step = export.load_workdir(workdir, "latest")
  assert step == 5
  latest, expected = export.flatten(variables), export.flatten(_CACHE["latest"])
  for key in expected:
    np.testing.assert_array_equal(latest[key], expected[key])
  with pytest.raises(FileNotFoundError, match="no best checkpoint 7"):
    export.load_workdir(workdir, "best", step=7)


def test_bad_artifacts_are_named(setup, tmp_path):
  _, artifact, _, _ = setup

  def copy(name):
    target = tmp_path / name
    shutil.copytree(artifact, target)
    return target

  damaged = copy("damaged")
  data = bytearray((damaged / "weights.npz").read_bytes())
  data[-10] ^= 0xFF
  (damaged / "weights.npz").write_bytes(bytes(data))
  with pytest.raises(ArtifactError, match=r"damaged/weights\.npz does not match the sha256"):
    Detector.from_export(damaged)

  newer = copy("newer")
  manifest = json.loads((newer / "manifest.json").read_text())
  manifest["format_version"] = 3
  (newer / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(IncompatibleArtifactError, match=r"newer/manifest\.json: artifact format "
                     r"version 3 .* reads version 2"):
    Detector.from_export(newer)

  older = copy("older")  # version 1: a module without per-image sizes
  manifest = json.loads((older / "manifest.json").read_text())
  manifest["format_version"] = 1
  (older / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(IncompatibleArtifactError, match=r"older/manifest\.json: artifact format "
                     r"version 1 .* reads version 2\. Re-export the workdir"):
    Detector.from_export(older)

  garbage = copy("garbage")
  (garbage / "model.jaxexport").write_bytes(b"not a module")
  manifest = json.loads((garbage / "manifest.json").read_text())
  manifest["files"]["model.jaxexport"]["sha256"] = export.detector.sha256(
      garbage / "model.jaxexport")
  (garbage / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(IncompatibleArtifactError, match=r"cannot deserialize .*garbage/model\.jaxexport"):
    Detector.from_export(garbage)

  with pytest.raises(ArtifactError, match="is not an exported irst_jax detector"):
    Detector.from_export(tmp_path)


_BLOCKER = """
import sys
class Blocker:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in {'irst_jax', 'flax', 'optax', 'orbax', 'ml_collections',
                              'tensorflow', 'tensorflow_datasets', 'grain'}:
      raise ImportError(f'blocked: {name}')
sys.meta_path.insert(0, Blocker())
sys.path.insert(0, sys.argv[1])
import numpy as np
from irst_detector import Detector
detector = Detector.from_export(sys.argv[1])
result = detector(np.load(sys.argv[2]))
np.save(sys.argv[3], result.score)
print(len(result.detections), sorted(m for m in sys.modules if m.split('.')[0] == 'flax'))
"""


def test_loader_needs_only_jax_and_numpy(setup, exported, tmp_path):
  _, artifact, _, _ = setup
  image = _images(1, 33, 64, seed=3)[0]
  np.save(tmp_path / "image.npy", image)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _BLOCKER, str(artifact), str(tmp_path / "image.npy"),
                        str(tmp_path / "score.npy")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  expected = exported(image)
  assert out.stdout.split()[0] == str(len(expected.detections)) and out.stdout.strip().endswith("[]")
  np.testing.assert_allclose(np.load(tmp_path / "score.npy"), expected.score, atol=1e-6)




def tiny_artifact(directory: pathlib.Path, channels: int = 1, **manifest_fields) -> pathlib.Path:
  """An artifact of a trivial module, forward(weights, images, sizes, t) -> (images - bias,
  labels of images - bias > t inside each image's size), with a valid manifest (threshold 0.5)
  updated by `manifest_fields`."""
  from irst_jax.serving import detector

  def forward(weights, images, sizes, logit_threshold):
    logits = images[..., :1] - weights["params/bias"]
    rows = jnp.arange(images.shape[1])[None, :, None]
    cols = jnp.arange(images.shape[2])[None, None, :]
    valid = (rows < sizes[:, 0, None, None]) & (cols < sizes[:, 1, None, None])
    return logits, ((logits[..., 0] > logit_threshold) & valid).astype(jnp.int32)

  scope = jax.export.SymbolicScope(["h <= 16384", "w <= 16384"])
  b, h, w = jax.export.symbolic_shape("b, h, w", scope=scope)
  exported = jax.export.export(jax.jit(forward), platforms=("cpu",))(
      {"params/bias": jax.ShapeDtypeStruct((), jnp.float32)},
      jax.ShapeDtypeStruct((b, h, w, channels), jnp.float32),
      jax.ShapeDtypeStruct((b, 2), jnp.int32), jax.ShapeDtypeStruct((), jnp.float32))
  directory.mkdir(parents=True, exist_ok=True)
  (directory / detector.MODULE_FILE).write_bytes(exported.serialize())
  np.savez(directory / detector.WEIGHTS_FILE, **{"params/bias": np.float32(128.0)})
  manifest = {"format": detector.FORMAT_NAME, "format_version": detector.FORMAT_VERSION,
              "threshold": 0.5, "model": {"name": "tiny", "in_channels": 1},
              "input": {"layout": "NHWC", "shape": ["b", "h", "w", 1], "dtype": "float32"},
              "files": {name: {"sha256": detector.sha256(directory / name)}
                        for name in (detector.MODULE_FILE, detector.WEIGHTS_FILE)}}
  manifest.update(manifest_fields)
  (directory / detector.MANIFEST_FILE).write_text(json.dumps(manifest))
  return directory


def test_manifest_fields_are_checked_against_the_module(tmp_path):
  # a valid tiny artifact predicts: score sigmoid(x - 128) > 0.5 exactly where x > 128
  tiny = Detector.from_export(tiny_artifact(tmp_path / "ok"))
  result = tiny(np.array([[0, 128, 129, 255]], np.uint8))
  assert result.mask.tolist() == [[False, False, True, True]] and tiny.threshold == 0.5
  np.testing.assert_allclose(result.score, 1 / (1 + np.exp(-np.array([[-128, 0, 1, 127.0]]))),
                             rtol=1e-6, atol=1e-30)
  for name, fields, message in [
      ("threshold", {"threshold": 1.5}, r"threshold 1\.5 in .*threshold/manifest\.json: expected "
                                        r"a probability in \(0, 1\)"),
      ("no_threshold", {"threshold": None}, r"threshold None in .*no_threshold/manifest\.json"),
      ("text", {"threshold": "0.5"}, r"threshold '0\.5' in .*text/manifest\.json"),
      ("shape", {"input": {"shape": ["b", "h", "w", 3], "dtype": "float32"}},
       r"input shape \['b', 'h', 'w', 3\] in .*shape/manifest\.json does not match the module's "
       r"image input \['b', 'h', 'w', 1\]"),
      ("dtype", {"input": {"shape": ["b", "h", "w", 1], "dtype": "uint8"}},
       r"input dtype 'uint8' in .*dtype/manifest\.json does not match the module's image input "
       r"dtype 'float32'"),
  ]:
    with pytest.raises(ArtifactError, match=message):
      Detector.from_export(tiny_artifact(tmp_path / name, **fields))
  rgb = tiny_artifact(tmp_path / "rgb", channels=3, input={"shape": ["b", "h", "w", 3],
                                                           "dtype": "float32"})
  with pytest.raises(ArtifactError, match=r"rgb/model\.jaxexport takes images with 3 channels; "
                     r"this loader feeds grey images \[b, h, w, 1\]"):
    Detector.from_export(rgb)
