"""Frames of any size (tiles stitched into one score map) and test-time augmentation.

The networks here are small local ones written with jax.lax (the contract of
``export.make_forward``: images [b, H, W, 1] 0..255 with sizes, padding set to 0 and the canvas
padded to 32, labels of the thresholded logits), so their receptive field is known: a stride-2
pooling stage between 3x3 convolutions reaches 6 pixels, and with an overlap of 32 (16 pixels
from every tile border) the stitched map must equal whole-frame inference exactly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irst_jax.serving import detector as detector_lib
from irst_jax.serving import export
from irst_jax.serving.detector import Detector, apply_transform, axis_tiles, tta_transforms

MANIFEST = {"threshold": 0.5, "input": {"pad_multiple": 32}}


def _conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _local_forward(kernels, normalise=True):
  """forward(images, sizes, logit_threshold) of a local network: conv 3x3, ReLU, 2x2 average
  pooling, conv 3x3, ReLU, nearest 2x upsampling, conv 3x3 (receptive field radius 6)."""

  @jax.jit
  def forward(images, sizes, logit_threshold):
    _, h, w, _ = images.shape
    valid = export.valid_mask(sizes, h, w)[..., None]
    x = (images - 100.0) / 50.0 if normalise else images
    x = jnp.where(valid, x, 0.0)
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    x = jax.nn.relu(_conv(x, kernels[0]))
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
    x = jax.nn.relu(_conv(x, kernels[1]))
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    logits = _conv(x, kernels[2])[:, :h, :w]
    return logits, export.label_components(logits, sizes, logit_threshold)

  return forward


def _random_kernels(seed):
  rng = np.random.default_rng(seed)
  return [rng.normal(0, s, shape).astype(np.float32)
          for s, shape in ((0.5, (3, 3, 1, 4)), (0.3, (3, 3, 4, 4)), (0.3, (3, 3, 4, 1)))]


def _geometry(prediction):
  """The detections without their scores (which carry the convolutions' rounding)."""
  return [(d.target_id, d.x, d.y, d.area, d.x_min, d.y_min, d.x_max, d.y_max)
          for d in prediction.detections]


@pytest.fixture(scope="module")
def local_forward():
  return _local_forward(_random_kernels(0))


def test_axis_tiles_layout():
  # 1000 px, tiles of 512 overlapping by 64: stride 448, last tile ends at 1024 (the padded end)
  size, tiles = axis_tiles(1000, 512, 64)
  assert size == 512
  assert tiles == [(0, 0, 480), (448, 480, 736), (512, 736, 1000)]
  # a short axis is one tile of its padded length
  assert axis_tiles(70, 512, 64) == (96, [(0, 0, 70)])
  # every owned pixel lies >= overlap / 2 from its tile's borders inside the frame
  for length in (33, 513, 1000, 2049, 3001):
    size, tiles = axis_tiles(length, 256, 64)
    assert [t[1] for t in tiles[1:]] == [t[2] for t in tiles[:-1]] and tiles[-1][2] == length
    for k, (o, start, stop) in enumerate(tiles):
      assert o % 32 == 0 and o <= start < stop <= o + size
      assert k == 0 or start - o >= 32
      assert k == len(tiles) - 1 or o + size - stop >= 32
  for tile, overlap in ((500, 64), (512, 60), (512, 512), (0, 0)):
    with pytest.raises(ValueError, match="multiple of 32"):
      axis_tiles(100, tile, overlap)


def test_stitched_map_equals_whole_frame(local_forward):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (300, 420)).astype(np.uint8)
  whole = Detector(local_forward, MANIFEST, tile=0)(image)
  tiled = Detector(local_forward, MANIFEST, tile=128, overlap=32, tile_batch=3)(image)
  # 3 x 4 tiles of 128: the stitched map is whole-frame inference (up to the float rounding
  # of XLA's convolutions, whose summation order depends on the input shape)
  np.testing.assert_allclose(tiled.score, whole.score, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(tiled.mask, whole.mask)
  assert _geometry(tiled) == _geometry(whole) and len(whole.detections) > 3
  # without overlap the tile borders show: the check above can fail
  cut = Detector(local_forward, MANIFEST, tile=128, overlap=0)(image)
  assert np.abs(cut.score - whole.score).max() > 1e-3


def test_target_across_tile_borders_is_one_detection():
  # A box filter (every kernel positive): a bright square on a dark frame is one target.
  ones = [np.full((3, 3, 1, 4), 0.1, np.float32), np.full((3, 3, 4, 4), 0.1, np.float32),
          np.full((3, 3, 4, 1), 0.1, np.float32)]
  forward = _local_forward(ones)
  image = np.zeros((200, 400), np.uint8)
  # tiles of 128 overlapping by 32 along the width: origins 0, 96, 192, 288, cuts at 112,
  # 208, 304
  image[60:66, 90:135] = 255    # across the cut at 112 and the tile borders at 96 and 128
  image[150:160, 300:310] = 255  # across the cut at 304
  detector = Detector(forward, MANIFEST, tile=128, overlap=32, tile_batch=4)
  assert [c for _, c, _ in axis_tiles(400, 128, 32)[1]][1:] == [112, 208, 304]
  tiled, whole = detector(image), Detector(forward, MANIFEST, tile=0)(image)
  assert len(tiled.detections) == 2
  first = tiled.detections[0]
  assert (first.x_min < 112 < first.x_max) and (first.x_min < 96) and (first.x_max > 128)
  assert _geometry(tiled) == _geometry(whole)


def test_automatic_tiling_and_large_sides(local_forward, monkeypatch):
  detector = Detector(local_forward, MANIFEST)   # tile=None: automatic
  assert detector.tile_size((2048, 2048)) is None
  assert detector.tile_size((2048, 2049)) == detector_lib.DEFAULT_TILE
  assert detector.overlap == 128
  assert Detector(local_forward, MANIFEST, tile=512).overlap == 64
  assert Detector(local_forward, MANIFEST, tile=512).tile_size((512, 300)) is None
  # a side above the module's 16384 is fine in tiles (only the frame's maps are held)
  monkeypatch.setattr(detector_lib, "MAX_SIDE", 256)
  image = np.random.default_rng(2).integers(0, 256, (40, 300)).astype(np.uint8)
  with pytest.raises(ValueError, match="sides above 256 are not supported without tiling"):
    Detector(local_forward, MANIFEST, tile=0)(image)
  tiled = Detector(local_forward, MANIFEST, tile=128, overlap=32)(image)
  assert tiled.score.shape == (40, 300)
  assert Detector(local_forward, MANIFEST).tile_size((40, 300)) == detector_lib.DEFAULT_TILE
  with pytest.raises(ValueError, match="multiple of 32"):
    Detector(local_forward, MANIFEST, tile=100)
  with pytest.raises(ValueError, match="tta must be one of"):
    Detector(local_forward, MANIFEST, tta="rotations")
  # a module padded to multiples of 96: automatic tiles of 1056 (1024 rounded up), overlap 96
  by_96 = Detector(local_forward, {"threshold": 0.5, "input": {"pad_multiple": 96}})
  assert (by_96.tile_size((4000, 4000)), by_96.overlap) == (1056, 96)


def _group_inputs(rng, size=64):
  """A random image and one symmetric under the 8 transforms (the mean of its orbit, integer)."""
  x = rng.integers(0, 256, (size, size)).astype(np.float32)
  symmetric = sum(apply_transform(x, t) for t in tta_transforms("flips_transpose"))
  return x, np.floor(symmetric / 8)


@pytest.mark.parametrize("tta", ["flips", "flips_transpose"])
def test_tta_is_exactly_equivariant(local_forward, tta):
  x, symmetric = _group_inputs(np.random.default_rng(3))
  detector = Detector(local_forward, MANIFEST, tta=tta, tile=0)
  plain = Detector(local_forward, MANIFEST, tile=0)
  out = detector(x)
  for t in tta_transforms(tta):
    moved = detector(np.ascontiguousarray(apply_transform(x, t)))
    np.testing.assert_array_equal(moved.score, apply_transform(out.score, t))
    np.testing.assert_array_equal(moved.mask, apply_transform(out.mask, t))
    assert len(moved.detections) == len(out.detections)
  # on an input symmetric under the group the TTA map is symmetric; the plain one is not
  sym = detector(symmetric)
  for t in tta_transforms(tta):
    np.testing.assert_array_equal(apply_transform(sym.score, t), sym.score)
  assert np.abs(plain(symmetric).score - sym.score).max() > 1e-3
  # the average by hand: each output mapped back by the group element undoing its transform
  probe = np.arange(12).reshape(3, 4)
  group = tta_transforms("flips_transpose")
  inverse = {t: next(u for u in group if apply_transform(apply_transform(probe, t), u).shape
                     == probe.shape and np.array_equal(apply_transform(apply_transform(probe, t),
                                                                       u), probe))
             for t in group}
  probabilities = [apply_transform(plain(np.ascontiguousarray(apply_transform(x, t))).score
                                   .astype(np.float64), inverse[t]) for t in tta_transforms(tta)]
  np.testing.assert_allclose(out.score, np.mean(probabilities, axis=0), atol=1e-6)


def test_tta_of_an_equivariant_network_equals_plain_inference():
  # Symmetric kernels on integer images (every sum exact in float32): the network commutes
  # with the group exactly, so averaging over the group changes nothing.
  k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)[:, :, None, None]
  forward = _local_forward([k * np.ones((1, 1, 1, 2), np.float32),
                            k * np.ones((1, 1, 2, 2), np.float32),
                            k * np.ones((1, 1, 2, 1), np.float32) * 2.0 ** -22], normalise=False)
  x = np.random.default_rng(4).integers(0, 256, (64, 64)).astype(np.float32)
  plain = Detector(forward, MANIFEST, tile=0)(x)
  for tta in ("flips", "flips_transpose"):
    out = Detector(forward, MANIFEST, tta=tta, tile=0)(x)
    np.testing.assert_array_equal(out.score, plain.score)


def test_tta_with_tiles_and_batches(local_forward):
  rng = np.random.default_rng(5)
  # sides multiples of 32: a flipped tile sees the strided grid of the flipped frame
  image = rng.integers(0, 256, (160, 256)).astype(np.uint8)
  whole = Detector(local_forward, MANIFEST, tta="flips_transpose", tile=0)
  tiled = Detector(local_forward, MANIFEST, tta="flips_transpose", tile=64, overlap=32)
  a, b = whole(image), tiled(image)
  np.testing.assert_allclose(a.score, b.score, rtol=0, atol=1e-6)
  assert _geometry(a) == _geometry(b)
  # a batch of two sizes on one canvas: each image as alone on that canvas
  other = rng.integers(0, 256, (40, 70)).astype(np.uint8)
  batch = whole.predict_batch([image, other], batch_size=3)
  alone = whole.predict_batch([other], canvas=(160, 256))[0]
  np.testing.assert_allclose(batch[0].score, a.score, rtol=0, atol=1e-6)
  np.testing.assert_allclose(batch[1].score, alone.score, rtol=0, atol=1e-6)
  assert _geometry(batch[1]) == _geometry(alone)


def test_tiles_of_a_16_bit_frame_share_its_min_max_scaling(local_forward):
  rng = np.random.default_rng(6)
  image = rng.integers(1000, 3000, (200, 300)).astype(np.uint16)
  image[10, 10], image[150, 250] = 500, 4000   # the frame's minimum and maximum, in two tiles
  kwargs = dict(uint16_scaling="min_max")
  whole = Detector(local_forward, MANIFEST, tile=0, **kwargs)(image)
  tiled = Detector(local_forward, MANIFEST, tile=128, overlap=32, **kwargs)(image)
  np.testing.assert_allclose(tiled.score, whole.score, rtol=0, atol=1e-6)


def test_predict_writes_tiled_frames(local_forward, tmp_path):
  from PIL import Image

  from irst_jax.serving import predict
  rng = np.random.default_rng(7)
  big = rng.integers(0, 256, (300, 200)).astype(np.uint8)
  small = rng.integers(0, 256, (40, 50)).astype(np.uint8)
  (tmp_path / "in").mkdir()
  Image.fromarray(big).save(tmp_path / "in" / "big.png")
  Image.fromarray(small).save(tmp_path / "in" / "small.png")
  detector = Detector(local_forward, MANIFEST, tile=128, overlap=32)
  report = predict.run(detector, [str(tmp_path / "in")], tmp_path / "out", save_scores=True,
                       show_progress=False)
  assert [r["height"] for r in report.images] == [300, 40] and not report.failures
  expected = Detector(local_forward, MANIFEST, tile=0)(big)
  mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "big.png")) > 0
  np.testing.assert_array_equal(mask, expected.mask)
  np.testing.assert_allclose(np.load(tmp_path / "out" / "scores" / "big.npy"), expected.score,
                             rtol=0, atol=1e-6)
  overlay = np.asarray(Image.open(tmp_path / "out" / "overlays" / "big.png"))
  # the uint8 frame drawn as it is: the overlay of its float grey image
  np.testing.assert_array_equal(
      overlay, np.asarray(predict.overlay(big.astype(np.float32), expected)))
