"""Optimisers and learning-rate schedules from config, with PyTorch semantics.

Recipes in this field come from PyTorch code, so the optimisers reproduce `torch.optim`:
- `adagrad`: accumulator starts at 0 and eps = 1e-10 is added to sqrt(accumulator)
  (`torch.optim.Adagrad`); optax's `adagrad` starts at 0.1 and puts eps inside the root.
- `sgd`: momentum and Nesterov as `torch.optim.SGD` (dampening 0).
- `adam`: `torch.optim.Adam`; `weight_decay` is coupled L2 (added to the gradient).
- `adamw`: decoupled weight decay (`torch.optim.AdamW`).
For adagrad, sgd and adam, `weight_decay` adds wd * param to the gradient first, as torch does.

Schedules are functions of the epoch (`step // steps_per_epoch`), as torch schedulers stepped
once an epoch: constant, multistep (milestones in epochs, factor gamma), cosine
(CosineAnnealingLR to `min_lr` over `num_epochs`), poly (lr * (1 - epoch / num_epochs)^power).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


class TorchAdagradState(NamedTuple):
  sum_of_squares: optax.Updates


def scale_by_torch_adagrad(eps: float = 1e-10, initial_accumulator_value: float = 0.0
                           ) -> optax.GradientTransformation:
  """g / (sqrt(sum of g^2) + eps), the update direction of `torch.optim.Adagrad`."""
  def init_fn(params):
    return TorchAdagradState(jax.tree_util.tree_map(
        lambda p: jnp.full_like(p, initial_accumulator_value), params))

  def update_fn(updates, state, params=None):
    del params
    sums = jax.tree_util.tree_map(lambda s, g: s + jnp.square(g), state.sum_of_squares, updates)
    updates = jax.tree_util.tree_map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, sums)
    return updates, TorchAdagradState(sums)

  return optax.GradientTransformation(init_fn, update_fn)


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int
                    ) -> optax.Schedule:
  """Learning rate as a function of the optimiser step (changes only at epoch boundaries).

  Raises ValueError naming an unknown schedule.
  """
  lr = config.learning_rate
  name = config.schedule

  def per_epoch(fn):
    return lambda step: fn(jnp.asarray(step) // steps_per_epoch)

  if name == "constant":
    return per_epoch(lambda epoch: jnp.asarray(lr, jnp.float32))
  if name == "multistep":
    milestones = jnp.asarray(list(config.milestones))
    return per_epoch(lambda epoch: lr * config.gamma ** jnp.sum(epoch >= milestones))
  if name == "cosine":
    return per_epoch(lambda epoch: config.min_lr + (lr - config.min_lr) * 0.5 * (
        1.0 + jnp.cos(jnp.pi * jnp.minimum(epoch, num_epochs) / num_epochs)))
  if name == "poly":
    return per_epoch(lambda epoch: lr * jnp.maximum(1.0 - epoch / num_epochs, 0.0) ** config.power)
  raise ValueError(f"unknown schedule {name!r}; expected constant, multistep, cosine or poly")


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser of `config` (fields: optimizer, learning_rate, weight_decay, momentum,
  nesterov, b1, b2, eps, schedule, milestones, gamma, min_lr, power) and its schedule.

  Raises ValueError naming an unknown optimiser.
  """
  schedule = create_schedule(config, steps_per_epoch, num_epochs)
  name, wd = config.optimizer, config.weight_decay
  coupled_decay = [optax.add_decayed_weights(wd)] if wd else []
  if name == "adagrad":
    direction = [scale_by_torch_adagrad(eps=config.eps)]
  elif name == "sgd":
    direction = [optax.trace(decay=config.momentum, nesterov=config.nesterov)] if config.momentum else []
  elif name == "adam":
    direction = [optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)]
  elif name == "adamw":
    return optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                       weight_decay=wd), schedule
  else:
    raise ValueError(f"unknown optimizer {name!r}; expected adagrad, sgd, adam or adamw")
  return optax.chain(*coupled_decay, *direction, optax.scale_by_learning_rate(schedule)), schedule
