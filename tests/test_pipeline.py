"""Tests of the input pipeline (training data on the device, evaluation iterator) over a tiny
prepared fake NUAA-SIRST."""

from __future__ import annotations

import collections

import ml_collections
import numpy as np
import pytest

from irst_jax.data import canvas, device_data, pipeline
from irst_jax.data.builders import nuaa_sirst
from tests.conftest import FAKE_SPLITS


@pytest.fixture
def cfg(prepared_fake_nuaa, no_download):
  raw, data_dir = prepared_fake_nuaa
  c = pipeline.default_dataset_config()
  c.data_dir = str(data_dir)
  c.manual_dir = str(raw)
  c.crop_size = 32
  return c


def _source(cfg, split):
  return nuaa_sirst.NuaaSirst(config=cfg.builder_config, data_dir=cfg.data_dir).as_data_source(
      split
  )


def _train(cfg, batch_size=4, num_devices=2, seed=0, epoch=0):
  """One epoch of training batches as the training step draws them on the device, each
  reshaped to [num_devices, batch_size // num_devices, ...]."""
  data, settings = device_data.load_train_data(cfg)
  batches = []
  for step in range(device_data.steps_per_epoch(data.num_examples, batch_size)):
    b = device_data.host_batch(data, settings, seed, epoch, step, batch_size)
    batches.append({k: b[k].reshape((num_devices, -1) + b[k].shape[1:]) for k in ("image", "mask")})
  return batches


def test_host_zeros_aligned_and_taken_in_place_on_cpu():
  import jax

  x = pipeline.host_zeros((3, 5, 7, 1), np.float32)
  assert x.shape == (3, 5, 7, 1) and x.dtype == np.float32 and not x.any()
  assert x.ctypes.data % 64 == 0
  if jax.default_backend() == "cpu":  # zero-copy: the device buffer is the numpy memory
    assert jax.device_put(x).unsafe_buffer_pointer() == x.ctypes.data


def test_default_config_fields():
  c = pipeline.default_dataset_config()
  assert c.name == "nuaa_sirst" and c.builder_config == "50_50"
  assert c.data_dir is None and c.manual_dir is None
  assert (c.crop_size, c.pad_multiple) == (256, 32) and "num_workers" not in c
  assert c.normalization == "dataset" and c.augment and c.shuffle


def test_dataset_info(cfg, prepared_fake_nuaa):
  info = pipeline.dataset_info(cfg)
  assert info.name == "nuaa_sirst" and info.builder_config == "50_50"
  assert info.num_examples == {"train": 6, "test": 6}
  meta = nuaa_sirst.NuaaSirst(config="50_50", data_dir=cfg.data_dir).info.metadata
  assert (info.mean, info.std) == (meta["mean"], meta["std"])
  cfg.normalization = "basicirstd"
  info = pipeline.dataset_info(cfg)
  assert (info.mean, info.std) == (101.06385, 34.61961)
  cfg.normalization = "imagenet"
  with pytest.raises(ValueError, match="imagenet"):
    pipeline.dataset_info(cfg)


def test_train_shapes_and_dtypes(cfg):
  batches = _train(cfg, batch_size=4, num_devices=2)
  assert len(batches) == 1  # 6 examples, drop remainder.
  for b in batches:
    assert set(b) == {"image", "mask"}
    for k in ("image", "mask"):
      assert b[k].shape == (2, 2, 32, 32, 1) and b[k].dtype == np.float32
    assert set(np.unique(b["mask"])) <= {0.0, 1.0}
  assert len(_train(cfg, batch_size=2, num_devices=1)) == 3


def test_train_determinism(cfg):
  a, b = _train(cfg, seed=3, epoch=1), _train(cfg, seed=3, epoch=1)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  c = _train(cfg, seed=3, epoch=2)
  assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_train_normalisation_and_small_image_padding(cfg):
  # Crop 64: fake images with both sides <= 64 px come out whole, normalised, zero-padded
  # bottom/right; no shuffle, no augmentation -> source order.
  cfg.crop_size, cfg.augment, cfg.shuffle, cfg.center_on_target_prob = 64, False, False, 0.0
  info = pipeline.dataset_info(cfg)
  batches = _train(cfg, batch_size=2, num_devices=1)
  source = _source(cfg, "train")
  images = np.concatenate([b["image"][0] for b in batches])
  masks = np.concatenate([b["mask"][0] for b in batches])
  assert images.shape == (6, 64, 64, 1)
  small = [i for i in range(6) if max(source[i]["image"].shape[:2]) <= 64]
  assert len(small) >= 2
  for i in small:
    ex = source[i]
    h, w = ex["image"].shape[:2]
    expected = (ex["image"].astype(np.float32) - np.float32(info.mean)) / np.float32(info.std)
    np.testing.assert_allclose(images[i, :h, :w], expected, rtol=1e-6, atol=1e-6)
    assert not images[i, h:].any() and not images[i, :, w:].any()
    np.testing.assert_array_equal(masks[i, :h, :w], ex["mask"].astype(np.float32))
    assert not masks[i, h:].any() and not masks[i, :, w:].any()


def test_crop_centred_on_target_always_has_target(cfg):
  cfg.center_on_target_prob = 1.0
  for epoch in range(4):
    for b in _train(cfg, batch_size=2, num_devices=1, epoch=epoch):
      assert b["mask"].reshape(2, -1).sum(axis=1).min() > 0


def test_train_errors(cfg):
  for bad in (0, -32, 48):
    cfg.crop_size = bad
    with pytest.raises(ValueError, match=f"crop_size.*{bad}"):
      _train(cfg)
  largest = pipeline.load_builder(cfg).info.metadata["max_train_side"]
  cfg.crop_size = (largest // 32 + 1) * 32  # fake images are 20..70 px: larger than all
  with pytest.raises(ValueError, match=f"crop_size={cfg.crop_size} is larger than every "
                     f"training image.*longest side {largest} px"):
    _train(cfg)
  cfg.crop_size = 32
  cfg.name = "no_such_set"
  with pytest.raises(ValueError, match="nuaa_sirst"):
    _train(cfg)


def _eval(cfg, split="test", batch_size=4, num_devices=2):
  return list(
      pipeline.create_eval_iterator(
          cfg, split=split, batch_size=batch_size, num_devices=num_devices
      )
  )


def _sizes(source) -> dict[str, tuple[int, int]]:
  return {source[i]["name"].decode(): source[i]["image"].shape[:2] for i in range(len(source))}


@pytest.mark.parametrize("batch_size, num_devices, max_canvases",
                         [(4, 2, 4), (1, 1, 1), (3, 1, 2), (2, 1, 100)])
def test_eval_iterator(cfg, batch_size, num_devices, max_canvases):
  cfg.max_eval_canvases = max_canvases
  info = pipeline.dataset_info(cfg)
  source = _source(cfg, "test")
  originals = {}
  for i in range(len(source)):
    ex = source[i]
    originals[ex["name"].decode()] = ex
  sizes = _sizes(source)
  own = {name: (-(-h // 32) * 32, -(-w // 32) * 32) for name, (h, w) in sizes.items()}
  assert len(set(own.values())) >= 3   # the fake split needs more shapes than 1 or 2
  if max_canvases == 1:       # by hand: the largest padded height by the largest padded width
    expected = {name: (max(h for h, _ in own.values()), max(w for _, w in own.values()))
                for name in own}
  elif max_canvases == 100:   # a budget above the sizes: each image on its own padded size
    expected = own
  else:
    plan = canvas.plan_canvases(list(sizes.values()), 32, max_canvases)
    expected = {name: canvas.assign(size, plan) for name, size in sizes.items()}
  seen = collections.Counter()
  order = []                  # (canvas, name) of the real examples, in yield order
  per_device = batch_size // num_devices
  batches = _eval(cfg, batch_size=batch_size, num_devices=num_devices)
  shapes = {b["image"].shape[2:4] for b in batches}
  assert len(shapes) <= max_canvases and shapes == set(expected.values())
  for b in batches:
    hp, wp = b["image"].shape[2:4]
    assert hp % 32 == 0 and wp % 32 == 0
    for k in ("image", "mask", "valid"):
      assert b[k].shape == (num_devices, per_device, hp, wp, 1) and b[k].dtype == np.float32
    assert b["name"].shape == (num_devices, per_device)
    for d in range(num_devices):
      for j in range(per_device):
        name = str(b["name"][d, j])
        valid = b["valid"][d, j]
        if not name:
          assert not valid.any() and not b["image"][d, j].any() and not b["mask"][d, j].any()
          continue
        seen[name] += 1
        order.append(((hp, wp), name))
        ex = originals[name]
        h, w = ex["image"].shape[:2]
        assert (hp, wp) == expected[name]
        # Top-left placement: the valid area is the image, at [:h, :w].
        assert valid.sum() == h * w and valid[:h, :w].all()
        expected_image = (ex["image"].astype(np.float32) - np.float32(info.mean)) / np.float32(
            info.std
        )
        np.testing.assert_allclose(b["image"][d, j, :h, :w], expected_image, rtol=1e-6,
                                   atol=1e-6)
        assert not b["image"][d, j, h:].any() and not b["image"][d, j, :, w:].any()
        np.testing.assert_array_equal(b["mask"][d, j, :h, :w], ex["mask"].astype(np.float32))
        assert b["mask"][d, j].sum() == (ex["mask"] > 0).sum()   # nothing in the padding
  assert dict(seen) == {n: 1 for n in FAKE_SPLITS["50_50"]["test"]}
  assert order == sorted(order)   # canvases by (Hc, Wc), names sorted within a canvas


def test_eval_iterator_multi_process(cfg, monkeypatch):
  """Two processes: the same number of batches of each canvas, each image in exactly one."""
  import jax

  cfg.max_eval_canvases = 2
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  per_process = []
  for proc in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda proc=proc: proc)
    per_process.append(_eval(cfg, batch_size=2, num_devices=1))
  a, b = ([x["image"].shape for x in batches] for batches in per_process)
  assert a == b and len({s[2:4] for s in a}) <= 2
  names = [str(n) for batches in per_process for x in batches for n in x["name"].ravel() if n]
  assert sorted(names) == sorted(FAKE_SPLITS["50_50"]["test"])


def test_eval_max_canvases_config(cfg):
  assert pipeline.default_dataset_config().max_eval_canvases == 4
  for bad in (0, -1):
    cfg.max_eval_canvases = bad
    with pytest.raises(ValueError, match=f"dataset.max_eval_canvases must be an integer >= 1.*"
                       f"got {bad!r}"):
      _eval(cfg)
  for bad in (2.5, "4", True, None):    # e.g. from a hand-edited config.json
    with pytest.raises(ValueError, match=f"max_eval_canvases must be an integer.*got {bad!r}"):
      pipeline.max_eval_canvases(ml_collections.ConfigDict({"max_eval_canvases": bad}))
  cfg.max_eval_canvases = 4
  # The saved config of a run before the field existed evaluates with the default (4).
  old = ml_collections.ConfigDict({k: v for k, v in cfg.items() if k != "max_eval_canvases"})
  assert "max_eval_canvases" not in old and pipeline.max_eval_canvases(old) == 4
  assert sorted(str(n) for x in _eval(old) for n in x["name"].ravel() if n) == sorted(
      FAKE_SPLITS["50_50"]["test"])


def test_eval_deterministic_and_other_splits(cfg):
  a, b = _eval(cfg), _eval(cfg)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["name"], y["name"])
    np.testing.assert_array_equal(x["image"], y["image"])
  cfg.builder_config = "acm"
  names = [str(n) for batch in _eval(cfg, split="val") for n in batch["name"].ravel() if n]
  assert sorted(names) == sorted(FAKE_SPLITS["acm"]["val"])


def test_imagenet_rgb_normalisation(cfg):
  # The official DNA-Net input (REFERENCE.md §1): RGB, ToTensor (x / 255), ImageNet mean/std.
  # By hand: grey 0 -> -m / s = (-2.117904, -2.035714, -1.804444) and
  # grey 255 -> (1 - m) / s = (2.248908, 2.428571, 2.640000).
  hand = {0: [-2.117904, -2.035714, -1.804444], 255: [2.248908, 2.428571, 2.640000]}
  cfg.normalization = "imagenet_rgb"
  cfg.crop_size, cfg.augment, cfg.shuffle, cfg.center_on_target_prob = 64, False, False, 0.0
  info = pipeline.dataset_info(cfg)
  assert info.channels == pipeline.image_channels(cfg) == 3
  assert info.mean == pytest.approx((123.675, 116.28, 103.53))
  assert info.std == pytest.approx((58.395, 57.12, 57.375))
  pipeline.check_channels(cfg, 3)
  with pytest.raises(ValueError, match=r"in_channels=1 .*'imagenet_rgb' yields 3-channel.*"
                     r"in_channels=3"):
    pipeline.check_channels(cfg, 1)

  source = _source(cfg, "train")
  train_images = np.concatenate([b["image"][0] for b in _train(cfg, batch_size=2, num_devices=1)])
  assert train_images.shape == (6, 64, 64, 3)
  eval_images = {str(n): image for b in _eval(cfg, split="train", batch_size=1, num_devices=1)
                 for n, image in zip(b["name"][0], b["image"][0])}
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  seen = set()
  for i in range(len(source)):
    ex = source[i]
    grey = ex["image"][..., 0]
    h, w = grey.shape
    want = (grey[..., None] / 255.0 - mean) / std   # float64, channels broadcast
    got = eval_images[ex["name"].decode()]
    assert got.shape[-1] == 3 and not got[h:].any() and not got[:, w:].any()
    np.testing.assert_allclose(got[:h, :w], want, atol=2e-6)
    if max(h, w) <= 64:   # whole in the 64 crop
      np.testing.assert_allclose(train_images[i, :h, :w], want, atol=2e-6)
    for value, expected in hand.items():
      if (grey == value).any():
        seen.add(value)
        np.testing.assert_allclose(got[:h, :w][grey == value], np.tile(expected, (
            int((grey == value).sum()), 1)), atol=1e-6)
  assert seen == {0, 255}


def test_mean_std_override(cfg):
  """dataset.mean / dataset.std replace the dataset's statistics in both iterators."""
  cfg.mean, cfg.std = 100.0, 20.0
  info = pipeline.dataset_info(cfg)
  assert (info.mean, info.std, info.normalization) == (100.0, 20.0, "dataset")
  source = _source(cfg, "test")
  originals = {source[i]["name"].decode(): source[i]["image"][..., 0] for i in range(len(source))}
  for b in _eval(cfg, batch_size=1, num_devices=1):
    name = str(b["name"][0, 0])
    h, w = originals[name].shape
    # by hand: grey 100 -> 0, grey 120 -> 1, grey 0 -> -5
    np.testing.assert_allclose(b["image"][0, 0, :h, :w, 0],
                               (originals[name].astype(np.float32) - 100.0) / 20.0, rtol=1e-6)
  train_images = np.concatenate([b["image"][0] for b in _train(cfg, batch_size=2, num_devices=1)])
  grey = train_images * 20.0 + 100.0   # back to grey levels: integers 0..255 (or 100: padding)
  np.testing.assert_allclose(grey, np.round(grey), atol=1e-3)
  assert grey.min() >= 0 and grey.max() <= 255 and np.unique(np.round(grey)).size > 50
  cfg.std = None
  with pytest.raises(ValueError, match=r"dataset\.mean=100\.0 and dataset\.std=None: expected "
                     r"both set"):
    pipeline.dataset_info(cfg)
  cfg.std, cfg.normalization = 20.0, "imagenet_rgb"
  with pytest.raises(ValueError, match=r"not 'imagenet_rgb'; unset them"):
    pipeline.dataset_info(cfg)


def test_eval_iterator_own_network_padding(cfg):
  """'own': images at their own padded size, mask and valid on the canvas (one here)."""
  cfg.max_eval_canvases = 1
  sizes = _sizes(_source(cfg, "test"))
  own = {name: canvas.padded_size(size, 32) for name, size in sizes.items()}
  largest = (max(h for h, _ in own.values()), max(w for _, w in own.values()))
  by_canvas = {str(n): b for b in _eval(cfg, batch_size=1, num_devices=1) for n in b["name"].ravel() if n}
  batches = list(pipeline.create_eval_iterator(cfg, split="test", batch_size=1, num_devices=1,
                                               network_padding="own"))
  names = [str(b["name"][0, 0]) for b in batches]
  assert sorted(names) == sorted(FAKE_SPLITS["50_50"]["test"])
  assert [own[n] for n in names] == sorted(own[n] for n in names)   # grouped by padded size
  for name, b in zip(names, batches):
    assert b["image"].shape[2:4] == own[name]
    assert b["mask"].shape[2:4] == b["valid"].shape[2:4] == largest
    hn, wn = own[name]
    # Same pixels as on the canvas: the canvas image cropped to the padded size.
    np.testing.assert_array_equal(b["image"], by_canvas[name]["image"][:, :, :hn, :wn])
    np.testing.assert_array_equal(b["valid"], by_canvas[name]["valid"])
    np.testing.assert_array_equal(b["mask"], by_canvas[name]["mask"])
  with pytest.raises(ValueError, match="network_padding='edge'"):
    next(pipeline.create_eval_iterator(cfg, split="test", batch_size=1, num_devices=1,
                                       network_padding="edge"))
  for bad in ("edge", None):
    with pytest.raises(ValueError, match="dataset.eval_network_padding"):
      pipeline.eval_network_padding(ml_collections.ConfigDict({"eval_network_padding": bad}))
  assert pipeline.eval_network_padding(ml_collections.ConfigDict({})) == "own"
