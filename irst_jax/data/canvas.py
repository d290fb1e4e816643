"""A few fixed padded shapes ("canvases") for whole-image evaluation and prediction.

Every distinct input shape of a jitted network is one XLA compilation. Padding each image to
the next multiple of 32 gives as many shapes as sizes (NUAA-SIRST 50_50 test: 34 shapes for
214 images); padding every image to the largest wastes compute and moves the numbers of
networks with global pooling. :func:`plan_canvases` picks at most ``max_canvases`` canvases
(multiples of ``multiple``) from the size distribution, each image going to the smallest
canvas that holds it, so that the total padded area is small; evaluation and ``predict`` use
the same plan, and a validity mask keeps the padding out of every metric and detection.
"""
from __future__ import annotations

from typing import Sequence

#: Default number of padded shapes per dataset split or folder of frames.
MAX_CANVASES = 4

Size = tuple[int, int]


def padded_size(size: Size, multiple: int) -> Size:
  """(H, W) rounded up to multiples of `multiple`."""
  h, w = size
  return (-(-int(h) // multiple) * multiple, -(-int(w) // multiple) * multiple)


def assign(size: Size, canvases: Sequence[Size]) -> Size:
  """The smallest-area canvas (ties: smaller height) holding an image of `size` (H, W).

  Raises:
    ValueError: no canvas holds the image.
  """
  h, w = size
  fitting = [c for c in canvases if c[0] >= h and c[1] >= w]
  if not fitting:
    raise ValueError(f"no canvas of {sorted(canvases)} holds an image of {h}x{w} pixels")
  return min(fitting, key=lambda c: (c[0] * c[1], c))


def _cost(sizes: Sequence[Size], counts: Sequence[int], canvases: Sequence[Size]) -> int:
  """Total padded area (pixels) of `counts` images of each size on their assigned canvases."""
  total = 0
  for size, n in zip(sizes, counts):
    h, w = assign(size, canvases)
    total += n * h * w
  return total


def plan_canvases(sizes: Sequence[Size], multiple: int = 32,
                  max_canvases: int = MAX_CANVASES) -> list[Size]:
  """At most `max_canvases` canvases (multiples of `multiple`) holding every image of `sizes`.

  Greedy: the first canvas is the largest padded height by the largest padded width (it holds
  every image); each further one is the (padded height, padded width) pair of the split that
  lowers the total padded area the most, until none lowers it. Deterministic: equal sizes
  give equal plans whatever their order.

  Args:
    sizes: (H, W) of each image, pixels.
    multiple: side multiple of every canvas (the network's, 32).
    max_canvases: at most this many canvases (>= 1).

  Returns:
    The canvases (Hc, Wc), sorted.

  Raises:
    ValueError: no sizes, a non-positive side, multiple or max_canvases.
  """
  if max_canvases < 1 or multiple < 1:
    raise ValueError(f"max_canvases and multiple must be >= 1, got {max_canvases}, {multiple}")
  if not sizes:
    raise ValueError("plan_canvases needs at least one image size")
  histogram: dict[Size, int] = {}
  for h, w in sizes:
    if h < 1 or w < 1:
      raise ValueError(f"image size must be positive, got {h}x{w}")
    key = padded_size((h, w), multiple)
    histogram[key] = histogram.get(key, 0) + 1
  padded = sorted(histogram)
  counts = [histogram[s] for s in padded]
  heights = sorted({h for h, _ in padded})
  widths = sorted({w for _, w in padded})
  canvases = [(heights[-1], widths[-1])]
  cost = _cost(padded, counts, canvases)
  candidates = [(h, w) for h in heights for w in widths]
  while len(canvases) < max_canvases:
    best, best_cost = None, cost
    for candidate in candidates:
      if candidate in canvases:
        continue
      new_cost = _cost(padded, counts, canvases + [candidate])
      if new_cost < best_cost:
        best, best_cost = candidate, new_cost
    if best is None:
      break
    canvases.append(best)
    cost = best_cost
  # Drop canvases that no image is assigned to (a later pick can take over an earlier one's).
  used = {assign(s, canvases) for s in padded}
  return sorted(used)
