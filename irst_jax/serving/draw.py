"""The overlay image of a prediction, drawn by ``predict`` (image files) and ``video``."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from irst_jax.serving import detector as detector_lib


def overlay(grey: np.ndarray, prediction: detector_lib.Prediction) -> Image.Image:
  """RGB image: grey (uint8, or float 0..255 rounded and clipped), mask pixels tinted red,
  boxes and ids in yellow."""
  if grey.dtype == np.uint8:
    base = grey
  else:
    base = np.empty(grey.shape, np.uint8)
    for start in range(0, grey.shape[0], 1024):  # row bands: no float copy of a large frame
      base[start:start + 1024] = np.clip(np.rint(grey[start:start + 1024]), 0, 255)
  rgb = np.repeat(base[..., None], 3, axis=-1)
  del base
  red = np.array([255, 0, 0], np.float32)
  rgb[prediction.mask] = (0.5 * rgb[prediction.mask] + 0.5 * red).astype(np.uint8)
  img = Image.fromarray(rgb, "RGB")
  del rgb
  draw = ImageDraw.Draw(img)
  for d in prediction.detections:
    draw.rectangle((d.x_min - 2, d.y_min - 2, d.x_max + 2, d.y_max + 2), outline=(255, 255, 0))
    draw.text((d.x_max + 4, max(d.y_min - 6, 0)), str(d.target_id), fill=(255, 255, 0))
  return img
