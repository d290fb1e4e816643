"""Training data held on the device: sampling, crops, flips, padding, and the scanned train step.

Synthetic splits whose grey value encodes the pixel's position (``16 y + x``), so that a crop
tells where it was taken and how it was flipped; the draws are deterministic per seed, and
the frequency checks allow about four standard deviations.
"""
from __future__ import annotations

import collections

import jax
import numpy as np
import pytest

from irst_jax.data import device_data

CROP = 8


def _settings(center_prob=0.0, flips=False, shuffle=True, crop=CROP):
  # mean 0, std 1: a crop's values are the canvas's grey values (0 where outside the image)
  return device_data.Augmentation(crop=crop, center_prob=center_prob, flips=flips,
                                  shuffle=shuffle, mean=(0.0,), std=(1.0,))


def _coded(h, w, target=None):
  """uint8 image [h, w] of value 16 y + x + 1 (0 is left for the padding) and its mask."""
  assert h <= 15 and w <= 16   # the values fit in uint8
  y, x = np.mgrid[:h, :w]
  image = (16 * y + x + 1).astype(np.uint8)
  mask = np.zeros((h, w), np.uint8)
  if target is not None:
    mask[target] = 1
  return image, mask


def _draw(data, settings, draws, seed=0, epoch=0):
  """`draws` examples of one global batch (step 0 of `epoch`)."""
  return device_data.host_batch(data, settings, seed, epoch, 0, global_batch=draws)


def _corner_and_transform(image):
  """(y0, x0, hflip, vflip, transpose) of a crop of a `_coded` image (fully inside it)."""
  v = image[..., 0].astype(int) - 1
  corners = v[[0, 0, -1, -1], [0, -1, 0, -1]]
  y0, x0 = corners.min() // 16, corners.min() % 16
  step_right = v[0, 1] - v[0, 0]            # +-1: rows kept rows; +-16: transposed
  transpose = abs(step_right) == 16
  down = v[1, 0] - v[0, 0]
  along_x, along_y = (down, step_right) if transpose else (step_right, down)
  return y0, x0, along_x < 0, along_y < 0, transpose


def test_crop_on_target_with_probability_one():
  # one target pixel per image: centred, clipped at the borders
  targets = [(7, 9), (0, 0), (14, 15), (3, 12)]
  data = device_data.from_examples(*zip(*[_coded(15, 16, t) for t in targets]), CROP)
  out = _draw(data, _settings(center_prob=1.0), 400)
  seen = set()
  for image, mask, index in zip(out["image"], out["mask"], out["index"]):
    ty, tx = targets[index]
    y0, x0, *_ = _corner_and_transform(image)
    assert (y0, x0) == (np.clip(ty - CROP // 2, 0, 15 - CROP), np.clip(tx - CROP // 2, 0, 16 - CROP))
    assert mask[ty - y0, tx - x0, 0] == 1 and mask.sum() == 1   # the target pixel is in the crop
    seen.add(int(index))
  assert seen == {0, 1, 2, 3}


def test_target_pixel_drawn_uniformly_among_targets():
  image, mask = _coded(15, 16)
  mask[2, 2] = mask[13, 13] = mask[13, 2] = 1   # three targets, three distinct windows
  data = device_data.from_examples([image], [mask], CROP)
  corners = collections.Counter(_corner_and_transform(im)[:2]
                                for im in _draw(data, _settings(center_prob=1.0), 900)["image"])
  assert set(corners) == {(0, 0), (7, 8), (7, 0)}
  assert all(abs(n - 300) < 4 * np.sqrt(900 * (1 / 3) * (2 / 3)) for n in corners.values())


def test_crop_uniform_with_probability_zero_and_half():
  image, mask = _coded(12, 11, target=(0, 0))
  data = device_data.from_examples([image], [mask], CROP)
  n = 2000
  corners = collections.Counter(_corner_and_transform(im)[:2]
                                for im in _draw(data, _settings(center_prob=0.0), n)["image"])
  positions = 5 * 4   # y0 in 0..4, x0 in 0..3
  assert set(corners) == {(y, x) for y in range(5) for x in range(4)}
  expected, sd = n / positions, np.sqrt(n / positions * (1 - 1 / positions))
  assert all(abs(c - expected) < 4.5 * sd for c in corners.values()), corners
  # probability 0.5: the centred window (0, 0) half of the time plus its uniform share
  corners = collections.Counter(_corner_and_transform(im)[:2]
                                for im in _draw(data, _settings(center_prob=0.5), n)["image"])
  p = 0.5 + 0.5 / positions
  assert abs(corners[(0, 0)] - n * p) < 4 * np.sqrt(n * p * (1 - p))


def test_flip_and_transpose_frequencies():
  image, mask = _coded(15, 16, target=(5, 5))
  data = device_data.from_examples([image], [mask], CROP)
  n = 2000
  out = _draw(data, _settings(center_prob=0.5, flips=True), n)
  drawn = np.array([_corner_and_transform(im)[2:] for im in out["image"]])
  sd = np.sqrt(n * 0.25)
  assert all(abs(k - n / 2) < 4 * sd for k in drawn.sum(axis=0)), drawn.sum(axis=0)
  combos = collections.Counter(map(tuple, drawn))   # the 8 transforms equally often
  assert len(combos) == 8 and all(abs(c - n / 8) < 4 * np.sqrt(n / 8 * 7 / 8)
                                  for c in combos.values())
  # the mask moves with the image: the target's grey value sits under the mask's pixel
  for im, m in zip(out["image"], out["mask"]):
    if m.sum():
      assert m.sum() == 1 and im[m[..., 0] > 0, 0] == 16 * 5 + 5 + 1


@pytest.mark.parametrize("size", [(5, 6), (5, 12), (12, 6), (10, 9)])
def test_padding_never_reaches_a_crop(size):
  """Images smaller than the crop (or than the canvas): the canvas's marker padding (200 in
  image and mask) never appears; the outside of the image is 0 and no target."""
  h, w = size
  image = np.full((h, w), 7, np.uint8)
  mask = np.zeros((h, w), np.uint8)
  mask[h - 1, w - 1] = 1
  data = device_data.from_examples([image], [mask], CROP, canvas=(20, 24), padding=200)
  assert (data.images[0, h:] == 200).all() and (data.masks[0, :, w:] == 200).all()
  n = 300
  out = _draw(data, _settings(center_prob=0.5, flips=True), n)
  assert set(np.unique(out["image"])) <= {0.0, 7.0}
  hp, wp = max(h, CROP), max(w, CROP)
  inside = min(h, CROP) * min(w, CROP)   # image pixels a crop holds
  for im, m in zip(out["image"], out["mask"]):
    assert (im == 7).sum() == inside and m.sum() <= 1
  # the last pixel (the target) is in every crop of an image smaller than the crop both ways
  if hp == wp == CROP:
    assert out["mask"].reshape(n, -1).sum(axis=1).min() == 1


def test_small_image_crop_positions():
  """As the host pipeline: a side smaller than the crop starts at 0, the other is uniform."""
  image, mask = _coded(5, 12)   # padded to 8 x 12: y0 = 0, x0 in 0..4
  data = device_data.from_examples([image], [mask], CROP, canvas=(16, 16), padding=255)
  out = _draw(data, _settings(), 500)
  x0s = collections.Counter()
  for im in out["image"]:
    v = im[..., 0]
    assert (v[5:] == 0).all() and (v[:5] > 0).all()   # rows 5..7: padding, read as 0
    y0, x0 = (int(v[0, 0]) - 1) // 16, (int(v[0, 0]) - 1) % 16
    assert y0 == 0
    x0s[x0] += 1
  assert sorted(x0s) == [0, 1, 2, 3, 4] and min(x0s.values()) > 60


def test_permutation_covers_each_example_once_per_epoch():
  data = device_data.from_examples(*zip(*[_coded(8, 8) for _ in range(10)]), CROP)
  seen = []
  for epoch in (0, 1):
    order = np.asarray(device_data.epoch_permutation(device_data.data_key(3), epoch, 10))
    assert sorted(order) == list(range(10))
    steps = device_data.steps_per_epoch(10, 3)   # 3 steps, the last example dropped
    assert steps == 3
    indices = np.concatenate([device_data.host_batch(data, _settings(), 3, epoch, s, 3)["index"]
                              for s in range(steps)])
    np.testing.assert_array_equal(indices, order[:9])
    seen.append(order)
  assert not np.array_equal(*seen)   # a new order each epoch
  np.testing.assert_array_equal(device_data.epoch_permutation(device_data.data_key(3), 0, 10,
                                                              shuffle=False), np.arange(10))


def test_device_share_and_determinism():
  """Each device's share is its slice of the global batch, drawn alike whatever the layout
  (2 processes x 2 devices x 2 examples here); a seed gives the same batch, another seed not."""
  examples = [_coded(15, 16, (i % 15, (2 * i) % 16)) for i in range(16)]   # 2 steps of 8
  data = device_data.from_examples(*zip(*examples), CROP)
  settings = _settings(center_prob=0.5, flips=True)
  whole = device_data.host_batch(data, settings, 5, 2, 1, global_batch=8)
  shares = []
  for process in range(2):
    for device in range(2):
      positions = np.asarray(device_data.device_positions(2, device, 2, process))
      shares.append(positions)
      part = device_data.host_batch(data, settings, 5, 2, 1, 8, positions=positions)
      for key in ("image", "mask", "index"):
        np.testing.assert_array_equal(part[key], whole[key][positions])
  np.testing.assert_array_equal(np.concatenate(shares), np.arange(8))
  again = device_data.host_batch(data, settings, 5, 2, 1, global_batch=8)
  other = device_data.host_batch(data, settings, 6, 2, 1, global_batch=8)
  np.testing.assert_array_equal(again["image"], whole["image"])
  assert not np.array_equal(other["image"], whole["image"])


def test_from_examples_errors():
  image, mask = _coded(10, 10)
  with pytest.raises(ValueError, match=r"canvas \(9, 12\) is smaller than the largest image or "
                     r"crop \(10, 10\)"):
    device_data.from_examples([image], [mask], CROP, canvas=(9, 12))
  with pytest.raises(ValueError, match=r"example 0: mask \(10, 9\) and image \(10, 10\) differ"):
    device_data.from_examples([image], [mask[:, :9]], CROP)


def test_scan_of_steps_equals_single_steps():
  """One dispatch of K = 3 scanned steps == 3 calls of the bare step on the same drawn batches."""
  from configs import acm_unet
  from irst_jax import models, optim, train

  config = acm_unet.get_config()
  config.model.channels = (4, 8, 8, 16)
  config.model.num_blocks = 1
  config.optim.optimizer = "sgd"
  config.optim.learning_rate = 0.05
  crop, batch, seed, epoch = 32, 2, 7, 1
  rng = np.random.default_rng(0)
  # 6 images (some smaller than the crop): 3 steps an epoch
  sizes = ((40, 36), (20, 50), (33, 33), (30, 20), (64, 40), (32, 32))
  images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in sizes]
  masks = [(rng.random(im.shape) > 0.97).astype(np.uint8) for im in images]
  data = device_data.from_examples(images, masks, crop)
  settings = device_data.Augmentation(crop=crop, center_prob=0.5, flips=True, shuffle=True,
                                      mean=(100.0,), std=(40.0,))
  model = models.create_model(config.model, axis_name=train.AXIS)
  tx, schedule = optim.create_optimizer(config.optim, 1, 10)
  devices = jax.local_devices()[:1]
  state = train.create_train_state(model, config, tx, (1, crop, crop, 1))
  chunk = train.make_train_chunk(model, config.train.loss, schedule, settings, num_steps=3,
                                 global_batch=batch, seed=seed, devices=devices)
  scanned, metrics = chunk(train.replicate(state, devices), device_data.put_on_devices(data,
                           devices), epoch, 0)
  step = train.make_train_step(model, config.train.loss, schedule, devices=devices)
  single = train.replicate(state, devices)
  losses = []
  for s in range(3):
    b = device_data.host_batch(data, settings, seed, epoch, s, batch)
    single, m = step(single, {"image": b["image"][None], "mask": b["mask"][None]})
    losses.append(float(m["loss"][0]))
  np.testing.assert_allclose(np.asarray(metrics["loss"][0]), losses, rtol=1e-6)
  assert int(scanned.step[0]) == int(single.step[0]) == 3
  moved = 0.0
  for a, b, s0 in zip(jax.tree_util.tree_leaves(scanned.params),
                      jax.tree_util.tree_leaves(single.params),
                      jax.tree_util.tree_leaves(state.params)):
    np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[0], atol=1e-6)
    moved = max(moved, float(np.abs(np.asarray(a)[0] - np.asarray(s0)).max()))
  assert moved > 1e-4   # the steps changed the parameters: the comparison means something


def test_steps_per_dispatch():
  import ml_collections

  from irst_jax import train

  def k(value, steps, backend):
    return train.steps_per_dispatch(ml_collections.ConfigDict({"steps_per_dispatch": value}),
                                    steps, backend)

  assert (k(0, 13, "gpu"), k(0, 41, "gpu"), k(0, 41, "tpu"), k(0, 41, "cpu")) == (13, 16, 16, 1)
  assert (k(5, 13, "cpu"), k(5, 3, "gpu"), k(1, 13, "gpu")) == (5, 3, 1)
  assert train.steps_per_dispatch(ml_collections.ConfigDict({}), 41, "gpu") == 16   # older configs
