"""Optimisers (PyTorch semantics), schedules, losses and the data-parallel train step."""
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import acm_unet
from irst_jax import losses, optim


def _optim_config(**overrides):
  config = acm_unet.get_config().optim
  config.unlock() if hasattr(config, "unlock") else None
  for key, value in overrides.items():
    config[key] = value
  return config


def _run(tx, grads, p0=1.0):
  params = jnp.array(p0)
  state = tx.init(params)
  trajectory = []
  for g in grads:
    updates, state = tx.update(jnp.array(g), state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(float(params))
  return trajectory


def test_adagrad_follows_torch():
  # torch.optim.Adagrad(lr=0.1): acc starts at 0; p -= lr * g / (sqrt(acc) + 1e-10).
  # g = 0.5: acc 0.25, p = 1 - 0.1 * 0.5 / 0.5 = 0.9; g = -1: acc 1.25, p = 0.9 + 0.1 / sqrt(1.25).
  cfg = _optim_config(optimizer="adagrad", learning_rate=0.1, eps=1e-10, schedule="constant")
  tx, _ = optim.create_optimizer(cfg, steps_per_epoch=1, num_epochs=10)
  np.testing.assert_allclose(_run(tx, [0.5, -1.0]), [0.9, 0.9 + 0.1 / np.sqrt(1.25)], rtol=1e-6)
  # With weight_decay 0.1 (coupled): g' = 0.6 -> p 0.9; g' = -1 + 0.09 = -0.91, acc 0.36 + 0.8281.
  cfg.weight_decay = 0.1
  tx, _ = optim.create_optimizer(cfg, steps_per_epoch=1, num_epochs=10)
  np.testing.assert_allclose(_run(tx, [0.5, -1.0]), [0.9, 0.9 + 0.1 * 0.91 / np.sqrt(1.1881)],
                             rtol=1e-6)


def test_sgd_nesterov_follows_torch():
  # torch SGD(lr=0.1, momentum=0.9, nesterov=True): buf = 0.9 buf + g; p -= lr (g + 0.9 buf).
  # g = 1: buf 1, p = 1 - 0.19 = 0.81; g = 1: buf 1.9, p = 0.81 - 0.1 * 2.71 = 0.539.
  cfg = _optim_config(optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
                      schedule="constant")
  tx, _ = optim.create_optimizer(cfg, steps_per_epoch=1, num_epochs=10)
  np.testing.assert_allclose(_run(tx, [1.0, 1.0]), [0.81, 0.539], rtol=1e-6)


def test_adam_first_step_is_lr_times_sign():
  cfg = _optim_config(optimizer="adam", learning_rate=0.01, schedule="constant")
  tx, _ = optim.create_optimizer(cfg, steps_per_epoch=1, num_epochs=10)
  np.testing.assert_allclose(_run(tx, [3.0]), [0.99], rtol=1e-6)


def test_schedules_change_per_epoch():
  cfg = _optim_config(learning_rate=1.0, schedule="multistep", milestones=(2, 3), gamma=0.5)
  lr = optim.create_schedule(cfg, steps_per_epoch=10, num_epochs=4)
  np.testing.assert_allclose([lr(0), lr(19), lr(20), lr(29), lr(30)], [1, 1, 0.5, 0.5, 0.25])
  cfg = _optim_config(learning_rate=1.0, schedule="cosine", min_lr=0.1)
  lr = optim.create_schedule(cfg, steps_per_epoch=10, num_epochs=4)
  np.testing.assert_allclose([lr(0), lr(9), lr(20), lr(40)], [1.0, 1.0, 0.55, 0.1], rtol=1e-6)
  cfg = _optim_config(learning_rate=1.0, schedule="poly", power=0.9)
  lr = optim.create_schedule(cfg, steps_per_epoch=10, num_epochs=4)
  np.testing.assert_allclose([lr(0), lr(20)], [1.0, 0.5 ** 0.9], rtol=1e-6)
  with pytest.raises(ValueError, match="'step'"):
    optim.create_schedule(_optim_config(schedule="step"), 1, 1)
  with pytest.raises(ValueError, match="'rmsprop'"):
    optim.create_optimizer(_optim_config(optimizer="rmsprop"), 1, 1)


def test_soft_iou_and_bce_hand_values():
  logits = jnp.zeros((1, 4, 4, 1))           # p = 0.5 everywhere
  mask = jnp.zeros((1, 4, 4, 1)).at[0, :2, :2, 0].set(1.0)
  # inter = 4 * 0.5 = 2, sum p = 8, sum t = 4: 1 - (2 + 1) / (8 + 4 - 2 + 1) = 1 - 3/11.
  np.testing.assert_allclose(losses.soft_iou_loss(logits, mask), 1 - 3 / 11, rtol=1e-6)
  np.testing.assert_allclose(losses.bce_loss(logits, mask), np.log(2.0), rtol=1e-6)
  loss = losses.get_loss("soft_iou")
  np.testing.assert_allclose(loss([logits, logits + 100.0], mask),
                             ((1 - 3 / 11) + (1 - 5 / 17)) / 2, rtol=1e-5)
  with pytest.raises(ValueError, match="'dice'"):
    losses.get_loss("dice")


_EQUIVALENCE_SCRIPT = textwrap.dedent("""
    import logging
    import jax, jax.numpy as jnp, numpy as np
    from configs import acm_unet
    from irst_jax import models, optim, train
    assert jax.local_device_count() == 2, jax.local_devices()
    config = acm_unet.get_config()
    config.model.channels = (4, 8, 8, 16)
    config.model.num_blocks = 1
    config.model.head_dropout = 0.0   # dropout masks differ per device by construction
    config.optim.optimizer = "sgd"     # Adagrad's first step is lr * sign(g): too sensitive
    config.optim.learning_rate = 0.05  # to float rounding of near-zero gradients to compare
    model = models.create_model(config.model, axis_name=train.AXIS)
    tx, schedule = optim.create_optimizer(config.optim, 10, 10)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 32, 32, 1)).astype(np.float32)
    mask = (rng.random((4, 32, 32, 1)) > 0.9).astype(np.float32)
    results = []
    for devices in (jax.local_devices()[:1], jax.local_devices()[:2]):
      d = len(devices)
      state = train.create_train_state(model, config, tx, (1, 32, 32, 1))
      step = train.make_train_step(model, config.train.loss, schedule, devices=devices)
      batch = {"image": image.reshape(d, 4 // d, 32, 32, 1), "mask": mask.reshape(d, 4 // d, 32, 32, 1)}
      state = train.replicate(state, devices=devices)
      state, metrics = step(state, batch)
      first_replica = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], state)
      # The returned state is a valid input as it is: a second step must not recompile.
      compiles = []
      handler = logging.Handler()
      handler.emit = lambda record: compiles.append(record.getMessage())
      logging.getLogger("jax").addHandler(handler)
      with jax.log_compiles():
        step(state, batch)
      logging.getLogger("jax").removeHandler(handler)
      assert not [m for m in compiles if m.startswith("Compiling")], compiles
      results.append((first_replica, float(metrics["loss"][0])))
    (one, loss1), (two, loss2) = results
    assert abs(loss1 - loss2) < 1e-6, (loss1, loss2)
    for a, b in zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(two.params)):
      np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(one.batch_stats), jax.tree_util.tree_leaves(two.batch_stats)):
      np.testing.assert_allclose(a, b, atol=1e-5)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree_util.tree_leaves(one.params),
        jax.tree_util.tree_leaves(train.create_train_state(model, config, tx, (1, 32, 32, 1)).params)))
    assert moved > 1e-3, moved
    # Steps drawn on the device: each device takes its share of the same global batch.
    from irst_jax.data import device_data
    sizes = ((40, 36), (20, 50), (33, 33), (30, 20), (64, 40), (32, 32), (50, 50), (20, 20))
    data = device_data.from_examples([rng.integers(0, 256, size=s, dtype=np.uint8) for s in sizes],
                                     [(rng.random(s) > 0.97).astype(np.uint8) for s in sizes], 32)
    settings = device_data.Augmentation(32, 0.5, True, True, (100.0,), (40.0,))
    chunks = []
    for devices in (jax.local_devices()[:1], jax.local_devices()[:2]):
      state = train.create_train_state(model, config, tx, (1, 32, 32, 1))
      chunk = train.make_train_chunk(model, config.train.loss, schedule, settings, num_steps=2,
                                     global_batch=4, seed=3, devices=devices)
      state, metrics = chunk(train.replicate(state, devices),
                             device_data.put_on_devices(data, devices), 1, 0)
      chunks.append((jax.tree_util.tree_map(lambda x: np.asarray(x)[0], state.params),
                     np.asarray(metrics["loss"][0])))
    (one, losses1), (two, losses2) = chunks
    np.testing.assert_allclose(losses1, losses2, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(two)):
      np.testing.assert_allclose(a, b, atol=1e-5)
    print("EQUIVALENT", loss1, loss2)
""")


def test_two_devices_equal_one_device():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=root)
  out = subprocess.run([sys.executable, "-c", _EQUIVALENCE_SCRIPT], env=env, cwd=root,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "EQUIVALENT" in out.stdout
