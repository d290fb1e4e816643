"""Evaluation protocols: how the field's reference codes turn a test set into IoU, Pd and Fa.

Papers and toolboxes score the same predictions differently; the protocol (config
``eval.protocol``, ``python -m irst_jax.score --protocol=...``) names which code's rules an
evaluation follows.  Everything else (8-connected components, greedy centroid matching at
distance ``< eval.distance_threshold``, IoU / nIoU sums) is common to all:

* ``basicirstd`` (default): images at their original size (zero padded to a multiple of 32
  for the network, padding never counted); Fa counts every predicted pixel outside the
  matched predicted components; target-level sweep at ``eval.roc_thresholds`` on the
  sigmoid scores.
* ``basicirstd_2023``: as ``basicirstd``, with the area rule for Fa.
* ``dnanet``: test image and mask resized to 256 x 256; the area rule for Fa; the sweep is
  DNA-Net's: Pd / Fa at logits ``> 25.5 i``, ``i = 0..10`` (11 thresholds).

*Area rule* (``metrics`` ``fa_rule="area"``): the reference sums the areas of the predicted
components ``[x for x in image_area_total if x not in image_area_match]``, so a predicted
component whose area equals the area of a matched component of the same image is left out
of Fa, matched or not (see :mod:`irst_jax.evaluation.metrics`).

The resize of ``dnanet`` (:func:`resize_batch`) follows DNA-Net's ``TestSetLoader``: the
image with PIL ``BILINEAR`` (a triangle filter widened by the scale when shrinking), the
mask with PIL ``NEAREST`` (source index ``floor((i + 0.5) * n / 256)``).  It is done in
float on device, without PIL's rounding of 8-bit images to integers after each pass (at most
half a grey level).  Under ``--mode=eval`` the network runs on the resized image and IoU, Pd
and Fa are counted on the 256 x 256 maps (Fa's denominator is ``256 * 256`` per image, as in
the reference's ``PD_FA.get``).  Scoring PNG predictions made at the original size
(``score``) resizes the prediction's score map bilinearly, as the image would be, and the
mask with nearest, then thresholds the scores: the prediction the network would have made
at 256 x 256 if it commutes with the resize.

All of it is jnp: the area rule reuses the component tables of
:mod:`irst_jax.evaluation.metrics`, the resize is two small matrix products and a gather per
image, so the evaluation stays one device program per canvas.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from irst_jax import errors

__all__ = ["Protocol", "PROTOCOLS", "DEFAULT", "get", "network_batch", "resize_batch",
           "bilinear_weights", "nearest_indices", "VALUES_UNITS"]

#: Units of the map an evaluation thresholds for its operating point (``values`` of
#: :func:`irst_jax.evaluation.curves.evaluation_outputs`): network logits, or scores in [0, 1].
VALUES_UNITS = ("logits", "scores")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One evaluation protocol.

  Attributes:
    name: the value of ``eval.protocol``.
    fa_rule: false alarm rule of :func:`irst_jax.evaluation.metrics.batch_statistics`,
      ``"pixels"`` or ``"area"``.
    input_size: ``None``: images at their original size; ``n``: every test image (and mask)
      resized to ``n x n`` before the network and the metrics.
    sweep_logits: the protocol's own target-level sweep, thresholds on the network's logits
      (``None``: the sweep of ``eval.roc_thresholds`` on sigmoid scores).
    sweep_scores: the same sweep on a score map in [0, 1] (PNG predictions), or ``None``.
    summary: what it changes, one line.
    reference: the code and date it follows.
  """
  name: str
  fa_rule: str
  input_size: int | None
  sweep_logits: tuple[float, ...] | None
  sweep_scores: tuple[float, ...] | None
  summary: str
  reference: str

  def sweep_thresholds(self, values_units: str) -> np.ndarray | None:
    """The protocol's own sweep in the units of the thresholded map (``"logits"`` or
    ``"scores"``), or ``None`` where ``eval.roc_thresholds`` applies.

    Raises:
      ValueError: unknown ``values_units``.
    """
    if values_units not in VALUES_UNITS:
      raise ValueError(f"values_units={values_units!r}: expected one of {list(VALUES_UNITS)}")
    sweep = self.sweep_logits if values_units == "logits" else self.sweep_scores
    return None if sweep is None else np.asarray(sweep, np.float32)


#: BasicIRSTD (github.com/XinyiYing/BasicIRSTD) ``metrics.py`` ``PD_FA`` since commit
#: 6576e62 of 2024-01-25 and ``test.py``: the network on the original image zero padded to a
#: multiple of 32, output cropped back; ``dismatch_pixel += (predits - true_img).sum()`` with
#: ``true_img`` the pixels of the matched predicted components; ``all_pixel += size[0] *
#: size[1]``.  The project's default.
BASICIRSTD = Protocol(
    name="basicirstd", fa_rule="pixels", input_size=None, sweep_logits=None, sweep_scores=None,
    summary="original size (padded to 32 for the network); Fa counts every predicted pixel "
            "outside the matched components",
    reference="BasicIRSTD metrics.py PD_FA since commit 6576e62 (2024-01-25)")

#: BasicIRSTD ``metrics.py`` ``PD_FA`` from its first commit (d3c7cae, 2023-04-04) to
#: b75ecc8 (2023-07-25), replaced on 2024-01-25; the code of its published tables:
#: ``self.dismatch = [x for x in self.image_area_total if x not in self.image_area_match]``,
#: ``self.dismatch_pixel += np.sum(self.dismatch)`` (both lists reset for every image).
#: Sizes and matching as :data:`BASICIRSTD`.
BASICIRSTD_2023 = Protocol(
    name="basicirstd_2023", fa_rule="area", input_size=None, sweep_logits=None,
    sweep_scores=None,
    summary="as basicirstd, but a predicted component whose area equals a matched "
            "component's area is left out of Fa",
    reference="BasicIRSTD metrics.py PD_FA before 2024-01-25 (d3c7cae 2023-04-04 .. b75ecc8 "
              "2023-07-25)")

#: DNA-Net's official code (github.com/YeRen123455/Infrared-Small-Target-Detection, last code
#: change 2021-2022): ``model/utils.py`` ``TestSetLoader._testval_sync_transform`` resizes the
#: image (``Image.BILINEAR``) and the mask (``Image.NEAREST``) to ``base_size`` = 256 (the
#: default of ``model/parse_args_test.py``); ``test.py`` feeds the network output ``pred``
#: (logits) to ``model/metric.py`` ``PD_FA(1, args.ROC_thr)`` with ``ROC_thr`` = 10, which
#: thresholds ``preds > iBin * (255 / bins)`` for ``iBin`` in ``range(bins + 1)`` (11
#: thresholds on the logits: 0, 25.5, ..., 255), applies the area rule and divides by
#: ``256 * 256 * img_num``; ``mIoU`` thresholds ``pred > 0``.  On a score map in [0, 1]
#: (an 8-bit PNG ``v``) the same thresholds ``v > 25.5 i`` are ``v / 255 > i / 10``.
DNANET = Protocol(
    name="dnanet", fa_rule="area", input_size=256,
    sweep_logits=tuple(i * (255 / 10) for i in range(11)),
    sweep_scores=tuple(i / 10 for i in range(11)),
    summary="test images and masks resized to 256x256 (bilinear / nearest); area-based Fa; "
            "Pd/Fa at logits > 25.5 i, i = 0..10",
    reference="DNA-Net official code (YeRen123455/Infrared-Small-Target-Detection) test.py, "
              "model/metric.py PD_FA, model/utils.py TestSetLoader")

#: Protocols by name.
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (BASICIRSTD, BASICIRSTD_2023, DNANET)}

#: The default protocol's name (config ``eval.protocol``).
DEFAULT = BASICIRSTD.name


def get(name_or_config) -> Protocol:
  """The protocol of a name or of an ``eval`` config section (``protocol`` field; a section
  without one, e.g. an older run's, is the default).

  Raises:
    errors.UserError: unknown protocol name.
  """
  if isinstance(name_or_config, str):
    name = name_or_config
  elif hasattr(name_or_config, "get"):
    name = name_or_config.get("protocol", DEFAULT)
  else:   # an attribute view of the section (baselines' hashable copy)
    name = getattr(name_or_config, "protocol", DEFAULT)
  if name not in PROTOCOLS:
    raise errors.UserError(f"eval.protocol={name!r}: expected one of {sorted(PROTOCOLS)}")
  return PROTOCOLS[name]


# --------------------------------------------------------------------------- #
# Resize of the DNA-Net protocol
# --------------------------------------------------------------------------- #
def bilinear_weights(n: jax.Array, out: int, size: int) -> jax.Array:
  """``[out, size]`` float32 weights of PIL's ``BILINEAR`` resize of a length-``n`` axis.

  PIL ``ImagingResample`` (``src/libImaging/Resample.c``): output sample ``i`` is centred at
  ``(i + 0.5) * n / out`` on the input, the triangle filter is widened by ``max(n / out, 1)``
  (antialiasing when shrinking), and each row of weights is normalised to sum 1 over the
  ``n`` input pixels.  Input pixels ``>= n`` (padding) get weight 0.  ``n`` may be traced
  (int scalar); ``n = 0`` gives all-zero weights.
  """
  nf = jnp.asarray(n, jnp.float32)
  scale = nf / out
  support = jnp.maximum(scale, 1.0)
  center = (jnp.arange(out, dtype=jnp.float32) + 0.5) * scale
  x = jnp.arange(size, dtype=jnp.float32) + 0.5
  w = jnp.maximum(0.0, 1.0 - jnp.abs(x[None, :] - center[:, None]) / support)
  w = jnp.where(jnp.arange(size)[None, :] < n, w, 0.0)
  total = jnp.sum(w, axis=1, keepdims=True)
  return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)


def nearest_indices(n: jax.Array, out: int) -> jax.Array:
  """``[out]`` int32 source indices of PIL's ``NEAREST`` resize of a length-``n`` axis:
  ``floor((i + 0.5) * n / out)`` (PIL's affine nearest transform of ``Image.resize``),
  computed exactly in integers."""
  i = jnp.arange(out, dtype=jnp.int32)
  return ((2 * i + 1) * jnp.asarray(n, jnp.int32)) // (2 * out)


def _resize_one(image, mask, valid, size):
  """One image ``[Hn, Wn, C]`` and its ``mask`` / ``valid`` ``[Hc, Wc, 1]`` (original pixels
  at the top-left) -> ``[size, size, C]``, ``[size, size, 1]`` x 2."""
  v = valid[..., 0] > 0
  h = jnp.sum(v[:, 0], dtype=jnp.int32)
  w = jnp.sum(v[0, :], dtype=jnp.int32)
  wr = bilinear_weights(h, size, image.shape[0])
  wc = bilinear_weights(w, size, image.shape[1])
  hi = jax.lax.Precision.HIGHEST
  resized = jnp.einsum("ah,hwc,bw->abc", wr, image.astype(jnp.float32), wc, precision=hi)
  rows, cols = nearest_indices(h, size), nearest_indices(w, size)
  real = ((h > 0) & (w > 0)).astype(jnp.float32)
  m = (mask[rows][:, cols] > 0).astype(jnp.float32) * real
  return resized, m, jnp.full((size, size, 1), real, jnp.float32)


@functools.partial(jax.jit, static_argnames=("size",))
def _resize_flat(image, mask, valid, *, size):
  return jax.vmap(lambda i, m, v: _resize_one(i, m, v, size))(image, mask, valid)


def resize_batch(image: jax.Array, mask: jax.Array, valid: jax.Array, size: int
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Each image of a batch resized to ``size x size`` as DNA-Net's test loader does.

  Args:
    image: ``[..., Hn, Wn, C]`` (NHWC with any leading axes, e.g. ``[D, b]``): each image at
      the top-left, its size given by ``valid``; float (normalised images or scores).
    mask, valid: ``[..., Hc, Wc, 1]``; ``valid``'s rectangle of ones at the top-left is the
      original size ``h x w`` (``h <= Hn``, ``w <= Wn``); images whose ``valid`` is all 0
      (dummies) come back with ``valid`` all 0.
    size: the output side (static).

  Returns:
    ``(image [..., size, size, C] bilinear, mask [..., size, size, 1] nearest in {0, 1},
    valid [..., size, size, 1] 1 for real images)``, float32.

  Raises:
    ValueError: leading shapes of the three arrays differ.
  """
  lead = np.shape(image)[:-3]
  if np.shape(mask)[:-3] != lead or np.shape(valid) != np.shape(mask):
    raise ValueError(f"image {np.shape(image)}, mask {np.shape(mask)}, valid "
                     f"{np.shape(valid)}: expected [..., H, W, C] with the same leading axes "
                     "and mask / valid alike")
  flat = lambda x: jnp.reshape(x, (-1,) + tuple(np.shape(x)[-3:]))
  out = _resize_flat(flat(image), flat(mask), flat(valid), size=int(size))
  return tuple(jnp.reshape(x, lead + tuple(x.shape[1:])) for x in out)


def network_batch(eval_config, batch: Mapping[str, jax.Array]) -> dict:
  """An eval batch as the protocol of ``eval_config`` feeds it to the network and metrics.

  The batch of :func:`irst_jax.data.pipeline.create_eval_iterator` (``image``
  ``[D, b, Hn, Wn, C]``, ``mask`` / ``valid`` ``[D, b, Hc, Wc, 1]``, other keys kept): itself
  for protocols at the original size, resized by :func:`resize_batch` for ``dnanet``.

  Raises:
    errors.UserError: unknown ``eval_config.protocol``.
  """
  protocol = get(eval_config)
  if protocol.input_size is None:
    return dict(batch)
  image, mask, valid = resize_batch(batch["image"], batch["mask"], batch["valid"],
                                    protocol.input_size)
  return {**batch, "image": image, "mask": mask, "valid": valid}
