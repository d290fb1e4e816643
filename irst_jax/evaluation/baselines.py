"""Model-driven baselines of single-frame IRSTD in ``jax.numpy`` (jit, vmap-able).

Every paper of the field compares against these filters; they are evaluated here by the
same metric code as the networks (:func:`evaluate_batch`).

* :func:`top_hat`: white top-hat ``I - opening(I)`` with a flat square structuring element
  of side ``size`` (default 3, EAAU-Net Table 2 "patch size 3 x 3"; DNA-Net gives none),
  clipped at the image border.
* :func:`max_median`: Max-Median filter (Deshpande et al., SPIE 1999): the background is the
  maximum of the medians of the ``size`` pixels along the horizontal, vertical, diagonal
  and anti-diagonal lines through a pixel; output ``max(I - background, 0)``; ``size``
  default 3 (EAAU-Net Table 2); edge-replicated border.
* :func:`mpcm`: multiscale patch-based contrast measure (Wei, You, Li, Pattern Recognition
  2016): at scale N, ``m`` = N x N box mean (edge-replicated); ``d_i = m(x) - m(x + N o_i)``
  for the 8 neighbouring patches ``o_i``; bright-target product of opposite directions
  ``max(d_i, 0) max(d_{i+4}, 0)``; PCM_N = min over the 4 pairs; MPCM = max over the scales
  ``N = 3, 5, 7, 9`` (the paper's; EAAU-Net Table 2 lists N = 1, 3, ..., 9).
* :func:`adaptive_threshold`: DNA-Net eq. 14,
  ``T = max(0.7 max(G), 0.5 std(G) + mean(G))`` over an image's valid pixels (EAAU-Net
  eq. 17 uses ``0.5 mean(G) + 0.5 max(G)``: ``rule='eaau_net'``).

Layout: images ``[H, W]`` float (any affine grey scale: all three filters are invariant to
an added constant and covariant with a positive factor, and so is the threshold rule).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from irst_jax.evaluation import curves as curves_lib
from irst_jax.evaluation import protocols

__all__ = ["top_hat", "max_median", "mpcm", "adaptive_threshold", "BASELINES", "evaluate_batch"]


def _window(x: jax.Array, size: int, op, init) -> jax.Array:
  return jax.lax.reduce_window(x, init, op, (size, size), (1, 1), "SAME")


def top_hat(image: jax.Array, size: int = 3) -> jax.Array:
  """White top-hat of ``[H, W]`` with a ``size`` x ``size`` square; returns ``[H, W]`` >= 0."""
  eroded = _window(image, size, jax.lax.min, jnp.inf)
  opened = _window(eroded, size, jax.lax.max, -jnp.inf)
  return image - opened


def max_median(image: jax.Array, size: int = 3) -> jax.Array:
  """Max-Median filter output ``max(I - max of 4 line medians, 0)`` of ``[H, W]``.

  Raises:
    ValueError: if ``size`` is not odd.
  """
  if size % 2 != 1:
    raise ValueError(f"max_median size must be odd, got {size}")
  r = size // 2
  h, w = image.shape
  padded = jnp.pad(image, r, mode="edge")
  medians = []
  for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
    line = jnp.stack([padded[r + k * dy:r + k * dy + h, r + k * dx:r + k * dx + w]
                      for k in range(-r, r + 1)])
    medians.append(jnp.median(line, axis=0))
  return jnp.maximum(image - jnp.max(jnp.stack(medians), axis=0), 0.0)


def mpcm(image: jax.Array, scales: tuple[int, ...] = (3, 5, 7, 9)) -> jax.Array:
  """Multiscale patch-based contrast measure (bright targets) of ``[H, W]``; ``>= 0``."""
  h, w = image.shape
  out = jnp.zeros_like(image)
  directions = ((-1, -1), (-1, 0), (-1, 1), (0, 1))  # o_i; o_{i+4} = -o_i
  for n in scales:
    r = n // 2
    pad = r + n
    padded = jnp.pad(image, pad, mode="edge")
    mean = _window(padded, n, jax.lax.add, 0.0) / (n * n)  # 'SAME' box sums, no pad inside

    def shifted(dy, dx, mean=mean, n=n, pad=pad):
      return mean[pad + dy * n:pad + dy * n + h, pad + dx * n:pad + dx * n + w]

    centre = shifted(0, 0)
    pcm = jnp.full_like(image, jnp.inf)
    for dy, dx in directions:
      d1 = jnp.maximum(centre - shifted(dy, dx), 0.0)
      d2 = jnp.maximum(centre - shifted(-dy, -dx), 0.0)
      pcm = jnp.minimum(pcm, d1 * d2)
    out = jnp.maximum(out, pcm)
  return out


def adaptive_threshold(output: jax.Array, valid: jax.Array, rule: str = "dnanet") -> jax.Array:
  """Per-image threshold of a filter output ``[H, W]`` over its ``valid`` pixels.

  ``rule='dnanet'``: DNA-Net eq. 14, ``max(0.7 max(G), 0.5 std(G) + mean(G))``;
  ``rule='eaau_net'``: EAAU-Net eq. 17, ``0.5 mean(G) + 0.5 max(G)``.

  Raises:
    ValueError: unknown rule.
  """
  v = valid.astype(output.dtype)
  n = jnp.maximum(jnp.sum(v), 1.0)
  mean = jnp.sum(output * v) / n
  std = jnp.sqrt(jnp.sum(((output - mean) * v) ** 2) / n)
  top = jnp.max(jnp.where(valid, output, -jnp.inf))
  if rule == "dnanet":
    return jnp.maximum(0.7 * top, 0.5 * std + mean)
  if rule == "eaau_net":
    return 0.5 * mean + 0.5 * top
  raise ValueError(f"unknown threshold rule {rule!r}; expected 'dnanet' or 'eaau_net'")


#: name -> filter of an [H, W] image with its default parameters.
BASELINES = {"top_hat": top_hat, "max_median": max_median, "mpcm": mpcm}


@functools.partial(jax.jit, static_argnames=("names", "eval_config", "rule"))
def _evaluate_batch(image, mask, valid, *, names, eval_config, rule):
  def one(name, img, v):
    g = BASELINES[name](img) * v
    t = adaptive_threshold(g, v > 0, rule)
    top = jnp.max(g)
    score = jnp.where(top > 0, g / jnp.where(top > 0, top, 1.0), 0.0)
    return g - t, jnp.clip(score, 0.0, 1.0)

  per = [jax.vmap(functools.partial(one, name))(image[..., 0], valid[..., 0]) for name in names]
  # One metric graph for all methods: stack them along the batch axis.
  values = jnp.concatenate([p[0] for p in per])[..., None]
  scores = jnp.concatenate([p[1] for p in per])[..., None]
  m = len(names)
  tile = lambda x: jnp.concatenate([x] * m)
  # curves=True: the operating point and the sweep share one compaction per image; the
  # histogram of the stacked batch mixes the methods and is replaced by per-method ones.
  out = curves_lib.evaluation_outputs(values, 0.0, scores, tile(mask), tile(valid), eval_config,
                                      curves=True)
  b = image.shape[0]
  result = {}
  for i, name in enumerate(names):
    part = slice(i * b, (i + 1) * b)
    result[name] = {
        "stats": {k: v[part] for k, v in out["stats"].items()},
        "hist": curves_lib.score_histograms(scores[part], mask, valid, eval_config.num_bins)}
    if "sweep" in out:
      result[name]["sweep"] = {k: v[:, part] for k, v in out["sweep"].items()}
  return result


class _Frozen:
  """Hashable view of an eval config section (a static jit argument)."""

  def __init__(self, eval_config):
    self._items = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                               for k, v in eval_config.items()))
    for k, v in self._items:
      setattr(self, k, v)

  def __hash__(self):
    return hash(self._items)

  def __eq__(self, other):
    return isinstance(other, _Frozen) and self._items == other._items


def evaluate_batch(image: jax.Array, mask: jax.Array, valid: jax.Array, eval_config,
                   rule: str = "dnanet", names: tuple[str, ...] = tuple(BASELINES)) -> dict:
  """:func:`irst_jax.evaluation.curves.evaluation_outputs` of each baseline of `names` on a batch.

  Operating point: ``G > T`` with ``T`` of :func:`adaptive_threshold` (per image); curves on
  ``G / max(G)`` per image; the target-level sweep only when ``eval_config.roc_thresholds``
  is not empty.  ``image``, ``mask``, ``valid``: ``[B, H, W, 1]``.  Returns
  {name: outputs}; the methods share one compiled metric graph.

  Raises:
    ValueError: unknown baseline name, or an evaluation protocol with its own input size or
      sweep (``dnanet``: its sweep is on network logits); ``basicirstd_2023``'s Fa rule applies.
  """
  unknown = [n for n in names if n not in BASELINES]
  if unknown:
    raise ValueError(f"unknown baseline {unknown[0]!r}; expected one of {sorted(BASELINES)}")
  protocol = protocols.get(eval_config)
  if protocol.input_size is not None or protocol.sweep_logits is not None:
    raise ValueError(f"eval.protocol={protocol.name!r} is not available for the baselines; "
                     "expected basicirstd or basicirstd_2023")
  return _evaluate_batch(image, mask, valid, names=tuple(names),
                         eval_config=_Frozen(eval_config), rule=rule)
