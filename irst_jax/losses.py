"""Segmentation losses for IRSTD (NHWC logits and masks).

- `soft_iou_loss`: 1 - (sum(p*t) + smooth) / (sum(p) + sum(t) - sum(p*t) + smooth), the
  "Soft-IoU" of ACM Sec. 5 ([26] Rahman & Wang), smooth = 1, over the whole batch as in the
  reference code (BasicIRSTD SoftIoULoss / open-acm).
- `bce_loss`: mean binary cross-entropy with logits.
- `unite_loss`: 2 x soft-IoU + 7 x BCE, CGRANet's unite loss (its L2 term is weight decay).
- `deep_supervision`: mean of a loss over several output maps (DNA-Net eq. 11, CGRANet).

Every loss takes `axis_name`: inside `jax.pmap` the sums run over the whole global batch
(`global_sum`), so that psum-ming the per-device gradients gives exactly the gradient of the
loss of the global batch.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

Outputs = Union[jax.Array, Sequence[jax.Array]]


def global_sum(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Sum of `x` over the devices of `axis_name` whose gradient flows only through the local `x`.

  With losses written on global sums this way and gradients psum-med over devices, a step on
  D devices equals a step on one device holding the whole batch (the soft-IoU ratio is not
  decomposable over devices, so averaging per-device losses would not be).
  """
  if axis_name is None:
    return x
  return x + jax.lax.stop_gradient(jax.lax.psum(x, axis_name) - x)


def soft_iou_loss(logits: jax.Array, mask: jax.Array, smooth: float = 1.0,
                  axis_name: Optional[str] = None) -> jax.Array:
  """Soft-IoU loss over a (global) batch.

  Args:
    logits: [N, H, W, 1] network logits.
    mask: [N, H, W, 1] ground truth in {0, 1}.
    smooth: additive smoothing of numerator and denominator (1 in the reference code).
    axis_name: pmap axis of the global batch, or None.
  Returns: scalar loss in [0, 1).
  """
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  inter = global_sum(jnp.sum(p * mask), axis_name)
  total = global_sum(jnp.sum(p) + jnp.sum(mask), axis_name)
  return 1.0 - (inter + smooth) / (total - inter + smooth)


def bce_loss(logits: jax.Array, mask: jax.Array, axis_name: Optional[str] = None) -> jax.Array:
  """Mean binary cross-entropy with logits over a (global) batch; shapes as `soft_iou_loss`."""
  total = global_sum(jnp.sum(optax.sigmoid_binary_cross_entropy(
      logits.astype(jnp.float32), mask)), axis_name)
  return total / global_sum(jnp.asarray(mask.size, jnp.float32), axis_name)


def unite_loss(logits: jax.Array, mask: jax.Array, iou_weight: float = 2.0,
               bce_weight: float = 7.0, axis_name: Optional[str] = None) -> jax.Array:
  """CGRANet's unite loss (Zhong et al., IEEE JSTARS 2023, Sec. III-E, eqs. 2-4) without its L2
  term: iou_weight * soft-IoU + bce_weight * BCE (lambda_1 = 2, lambda_2 = 7), both over the
  (global) batch as `soft_iou_loss` (smooth 1) and `bce_loss`; shapes as `soft_iou_loss`.

  The L2 term (lambda_3 = 1) is the optimiser's coupled weight decay ("Adam with L2
  regularisation", Sec. IV-A): adding wd * w to the gradient is exactly the gradient of
  lambda_3 * (wd / 2) * ||w||^2, and needs no parameters in the loss (configs/cgranet.py).
  """
  return (iou_weight * soft_iou_loss(logits, mask, axis_name=axis_name)
          + bce_weight * bce_loss(logits, mask, axis_name=axis_name))


LOSSES: dict[str, Callable[..., jax.Array]] = {
    "soft_iou": soft_iou_loss,
    "bce": bce_loss,
    "unite": unite_loss,
}


def deep_supervision(loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
                     ) -> Callable[[Outputs, jax.Array], jax.Array]:
  """Wraps `loss_fn` so that a sequence of output maps gives the mean loss over the maps."""
  def wrapped(outputs: Outputs, mask: jax.Array) -> jax.Array:
    if isinstance(outputs, (list, tuple)):
      return sum(loss_fn(o, mask) for o in outputs) / len(outputs)
    return loss_fn(outputs, mask)
  return wrapped


def get_loss(name: str, axis_name: Optional[str] = None
             ) -> Callable[[Outputs, jax.Array], jax.Array]:
  """Loss by config name; the returned function accepts one logit map or a sequence of them
  (deep supervision: the mean of the loss over the maps).

  Raises ValueError naming the value and the known losses.
  """
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
  return deep_supervision(functools.partial(LOSSES[name], axis_name=axis_name))
