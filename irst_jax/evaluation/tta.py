"""Test-time augmentation of the evaluation (`eval.tta`, `--mode=eval --tta=...`), in JAX.

The transforms and the averaging of `irst_jax.serving.detector` (``predict --tta``), inside the
compiled eval step: ``'flips'`` runs the network on the 4 flips of each image (identity,
vertical, horizontal, both), ``'flips_transpose'`` on the 8 transforms of the dihedral group
of the square (the flips of the image and of its transpose), maps each output back and
averages the sigmoid probabilities (not the logits, as predict does: the ensemble's
probability, on the scale of `eval.threshold`). Each pixel's values are summed in sorted
order, so the average does not depend on which transform gave which value: TTA of a flipped
(or transposed) image is the flipped TTA of the image, bit for bit; and they are summed
pairwise, so a network that commutes with the transforms gets exactly its own scores.

An eval batch holds images of different sizes at the top-left of one padded shape
(`irst_jax.data.pipeline.create_eval_iterator`); each image is flipped within its own
``h x w`` rectangle, so its padding stays bottom/right, as for predict's transformed images.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

#: `eval.tta` values; the same modes as ``irst_jax.serving.detector.TTA_MODES``.
TTA_MODES = ("none", "flips", "flips_transpose")

#: A transform of the dihedral group: (transpose, flip rows (vertical), flip columns
#: (horizontal)), applied in that order (as ``irst_jax.serving.detector.Transform``).
Transform = tuple[bool, bool, bool]


def transforms(tta: str) -> list[Transform]:
  """The transforms of a TTA mode (identity first), in the order of predict's.

  Raises:
    ValueError: `tta` not in TTA_MODES.
  """
  if tta not in TTA_MODES:
    raise ValueError(f"eval.tta={tta!r}: expected one of {list(TTA_MODES)}")
  flips = [(False, False), (False, True), (True, False), (True, True)]
  if tta == "none":
    flips = flips[:1]
  transposes = (False, True) if tta == "flips_transpose" else (False,)
  return [(t, rows, cols) for t in transposes for rows, cols in flips]


def image_sizes(valid: jax.Array) -> jax.Array:
  """int32 [B, 2] (h, w) of each image from its `valid` [B, H, W, 1] rectangle of ones at the
  top-left (0 for a dummy example)."""
  on = valid[..., 0] > 0
  return jnp.stack([on.any(axis=2).sum(axis=1), on.any(axis=1).sum(axis=1)], axis=-1
                   ).astype(jnp.int32)


def _flip_within(x: jax.Array, extent: jax.Array, axis: int) -> jax.Array:
  """`x` [B, H, W, C] with each image's first `extent` [B] rows (axis 1) or columns (axis 2)
  reversed and the rest (padding) in place. An involution."""
  n = x.shape[axis]
  i = jnp.arange(n)
  index = jnp.where(i < extent[:, None], extent[:, None] - 1 - i, i)   # [B, n]
  return jax.vmap(lambda image, idx: jnp.take(image, idx, axis=axis - 1))(x, index)


def apply_transform(x: jax.Array, sizes: jax.Array, transform: Transform
                    ) -> tuple[jax.Array, jax.Array]:
  """(`x` [B, H, W, C] transformed within each image's `sizes` [B, 2] rectangle, the
  transformed sizes); a transposed `x` is [B, W, H, C]."""
  transpose, flip_rows, flip_cols = transform
  if transpose:
    x, sizes = jnp.swapaxes(x, 1, 2), sizes[:, ::-1]
  if flip_rows:
    x = _flip_within(x, sizes[:, 0], 1)
  if flip_cols:
    x = _flip_within(x, sizes[:, 1], 2)
  return x, sizes


def invert_transform(y: jax.Array, sizes: jax.Array, transform: Transform) -> jax.Array:
  """A map `y` [B, H', W', C] of transformed images of `sizes` [B, 2] (the transformed ones)
  mapped back to the original orientation."""
  transpose, flip_rows, flip_cols = transform
  if flip_cols:
    y = _flip_within(y, sizes[:, 1], 2)
  if flip_rows:
    y = _flip_within(y, sizes[:, 0], 1)
  return jnp.swapaxes(y, 1, 2) if transpose else y


def average_scores(logits_fn: Callable[[jax.Array], jax.Array], image: jax.Array,
                   sizes: jax.Array, tta: str) -> jax.Array:
  """The TTA score map: the mean sigmoid probability over the transforms of `tta`.

  Args:
    logits_fn: the network, images [N, H, W, C] -> logits [N, H, W, 1], each image's
      logits independent of the others' (inference); called once on the [T * B, H, W, C]
      flipped images and, with transposes, once on the [T * B, W, H, C] transposed ones.
    image: [B, H, W, C] images at the top-left, of `sizes` [B, 2] (h, w).
    tta: one of TTA_MODES.

  Returns:
    float32 [B, H, W, 1] in [0, 1]; on the padding, the average of the network's padding
    scores (the caller masks it).
  """
  maps = []
  for transpose in (False, True):
    group = [t for t in transforms(tta) if t[0] == transpose]
    if not group:
      continue
    # One network call on the transformed images of one orientation, stacked on the batch axis:
    # the network is traced (and compiled) once per orientation, and every transformed image
    # goes through the same computation, whichever transform made it (exact equivariance).
    moved = [apply_transform(image, sizes, t) for t in group]
    scores = jax.nn.sigmoid(logits_fn(jnp.concatenate([m for m, _ in moved])))
    for t, (_, moved_sizes), s in zip(group, moved, jnp.split(scores, len(group))):
      maps.append(invert_transform(s, moved_sizes, t))
  # Summed in sorted order (exact equivariance), pairwise: n equal values (n = 1, 4, 8) sum to
  # exactly n times the value, so a network that commutes with the transforms gives its own
  # probabilities bit for bit.
  terms = list(jnp.sort(jnp.stack(maps), axis=0))
  while len(terms) > 1:
    terms = [a + b for a, b in zip(terms[::2], terms[1::2])] + terms[len(terms) // 2 * 2:]
  return terms[0] / len(maps)
