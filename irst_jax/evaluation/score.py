"""Scores another method's predictions (a folder of PNGs) with the project's metrics.

  python -m irst_jax.evaluation.score --predictions=DIR --dataset=nuaa_sirst \
      [--builder_config=50_50] --split=test [--threshold=0.5] [--protocol=basicirstd] \
      [--out_dir=DIR]

(also as ``python -m irst_jax.score``).

``DIR`` holds one PNG per image of the split, named as the dataset names it
(``Misc_1.png`` for NUAA-SIRST, ``000001.png`` for NUDT-SIRST, ``00000.png`` for the
MDvsFA-cGAN test set), at the image's original size: binary masks (0/255, or 0/1 for the
whole folder, or mode "1") or score maps, 8-bit 0..255 (score = value / 255) or 16-bit grey
0..65535 (score = value / 65535); a folder whose largest value is 1 is read as 0/1 masks.
Grey PNGs are read as they are; RGB/RGBA/palette PNGs are converted to grey (Pillow "L");
16-bit colour and other modes are refused, naming the file (:func:`read_score_map`).
Prediction at the operating point: ``score > threshold`` (default 0.5, i.e. 8-bit value
>= 128, 16-bit value >= 32768).

``--protocol`` (:mod:`irst_jax.evaluation.protocols`): ``basicirstd`` (default),
``basicirstd_2023`` (area-based Fa) or ``dnanet`` (prediction scores resized bilinearly and
masks with nearest to 256 x 256, area-based Fa, Pd/Fa at scores > i / 10, i = 0..10, the
reference's thresholds ``v > 25.5 i`` on an 8-bit map ``v``).

Prints the table of IoU, nIoU, Pd, Fa (x1e-6), AUC, AP, F-measure, F-area (same code as
``--mode=eval``: :mod:`irst_jax.evaluation.curves`, :mod:`irst_jax.evaluation.metrics`) and,
with ``--out_dir``, writes metrics.json, roc.png and pr.png there. A missing file, a file that
is not in the split, or a size that differs from the image's raises a ValueError naming the
files.
"""
from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
from absl import app, flags
from PIL import Image

from irst_jax import compilation_cache, errors
from irst_jax.data import pipeline
from irst_jax.evaluation import curves as curves_lib
from irst_jax.evaluation import protocols, report, tables

__all__ = ["score_folder", "read_predictions", "read_score_map", "dataset_config", "define_flags",
           "main"]


def dataset_config(name: str, builder_config: str | None = None, data_dir: str | None = None,
                   manual_dir: str | None = None, pad_multiple: int = 64
                   ) -> ml_collections.ConfigDict:
  """The dataset section for scoring (builder config default: the dataset's protocol)."""
  from irst_jax.configs import default

  cfg = pipeline.default_dataset_config()
  cfg.name = name
  if name in default.DATASET_DEFAULTS:
    cfg.builder_config = default.DATASET_DEFAULTS[name]["dataset"]["builder_config"]
  if builder_config:
    cfg.builder_config = builder_config
  cfg.data_dir = data_dir
  cfg.manual_dir = manual_dir
  cfg.pad_multiple = pad_multiple
  return cfg


def _names_and_sizes(source) -> dict[str, tuple[int, int]]:
  out = {}
  for i in range(len(source)):
    ex = source[i]
    name = ex["name"]
    out[name.decode("utf-8") if isinstance(name, bytes) else str(name)] = ex["mask"].shape[:2]
  return out


#: PIL modes of 8-bit images, read as grey 0..255 (colour and palette through convert('L')).
_EIGHT_BIT_MODES = ("L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBX")
#: PIL modes of 16-bit grey images, read as 0..65535.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def read_score_map(path) -> tuple[np.ndarray, float]:
  """(values float32 [H, W], full scale) of one prediction file; score = values / full scale.

  Full scale by depth: 1 for mode "1" (bilevel), 255 for 8-bit grey, palette and colour
  images (colour converted with PIL ``convert('L')``), 65535 for 16-bit grey (PIL mode
  ``I;16``, or ``I`` with every value in 0..65535), and 1 for float images (mode ``F``,
  values must lie in [0, 1]).

  Raises:
    ValueError: naming the file: unreadable, 16-bit colour, integer values outside
      0..65535, float values outside [0, 1], or another mode (e.g. CMYK).
  """
  path = pathlib.Path(path)
  try:
    with Image.open(path) as img:
      mode = img.mode
      sixteen_bit_colour = mode in _EIGHT_BIT_MODES and any(
          ";16" in str(getattr(tile, "args", "")) for tile in img.tile)
      img.load()
      if mode in _EIGHT_BIT_MODES and mode != "L":
        img = img.convert("L")
      values = np.asarray(img)
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
    raise ValueError(f"cannot read {path}: {e}") from None
  if sixteen_bit_colour:
    raise ValueError(f"{path} is a 16-bit colour image; expected a grey score map (8- or "
                     "16-bit) or a binary mask")
  if mode == "1":
    return values.astype(np.float32), 1.0
  if mode in _EIGHT_BIT_MODES:
    return values.astype(np.float32), 255.0
  if mode in _SIXTEEN_BIT_MODES:
    return values.astype(np.float32), 65535.0
  if mode == "I":
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
      raise ValueError(f"{path} holds 32-bit integer values {low}..{high}; expected a 16-bit "
                       "score map (0..65535) or an 8-bit one (0..255)")
    return values.astype(np.float32), 65535.0
  if mode == "F":
    values = values.astype(np.float32)
    if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
      raise ValueError(f"{path} holds float values {np.nanmin(values):g}..{np.nanmax(values):g}; "
                       "expected scores in [0, 1] (or an 8-bit / 16-bit score map)")
    return values, 1.0
  raise ValueError(f"{path} has image mode {mode!r}; expected a binary mask, an 8-bit "
                   "(0..255) or 16-bit (0..65535) grey score map, or float scores in [0, 1]")


def read_predictions(folder, sizes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
  """Reads ``<folder>/<name>.png`` for every name of `sizes` as float32 scores in [0, 1].

  Each file is read at its own depth (:func:`read_score_map`: 8-bit as value / 255, 16-bit
  as value / 65535), except that a folder whose largest value is 1 holds 0/1 masks and is
  read as it is.

  Raises:
    FileNotFoundError: the folder does not exist.
    ValueError: missing files, PNGs not in the split, unreadable files or unsupported image
      modes, or sizes that differ from the images' (all named).
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"predictions folder {folder} does not exist")
  present = {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ".png"}
  missing = sorted(set(sizes) - set(present))
  extra = sorted(set(present) - set(sizes))
  problems = []
  if missing:
    problems.append(f"{len(missing)} prediction(s) missing, e.g. "
                    + ", ".join(f"{n}.png" for n in missing[:10]))
  if extra:
    problems.append(f"{len(extra)} PNG(s) not in the split, e.g. "
                    + ", ".join(present[n].name for n in extra[:10]))
  if problems:
    raise ValueError(f"{folder}: " + "; ".join(problems)
                     + f" (expected one <name>.png for each of the {len(sizes)} images)")
  raw, wrong = {}, []
  for name, (h, w) in sizes.items():
    arr, full_scale = read_score_map(present[name])
    if arr.shape != (h, w):
      wrong.append(f"{present[name].name} is {arr.shape[1]}x{arr.shape[0]}, image is {w}x{h}")
    raw[name] = (arr, full_scale)
  if wrong:
    raise ValueError(f"{folder}: {len(wrong)} prediction(s) of the wrong size (width x "
                     "height): " + "; ".join(wrong[:10]))
  binary = max(float(a.max()) for a, _ in raw.values()) <= 1.0
  return {name: a if binary else a / np.float32(scale) for name, (a, scale) in raw.items()}


def score_folder(predictions, data_config: ml_collections.ConfigDict, split: str,
                 eval_config: ml_collections.ConfigDict, batch_size: int = 8
                 ) -> tuple[dict[str, float], dict]:
  """(table numbers, curves) of the PNG predictions in `predictions` on a dataset split,
  under the protocol of ``eval_config.protocol`` (:mod:`irst_jax.evaluation.protocols`)."""
  source = pipeline.load_builder(data_config).as_data_source(split=split)
  scores = read_predictions(predictions, _names_and_sizes(source))
  step = jax.jit(lambda s, m, v: curves_lib.evaluation_outputs(
      s, float(eval_config.threshold), s, m, v, eval_config, values_units="scores"))
  evaluation = curves_lib.Evaluation(eval_config, values_units="scores")
  for batch in pipeline.create_eval_iterator(data_config, split=split, batch_size=batch_size,
                                             num_devices=1):
    mask, valid = batch["mask"][0], batch["valid"][0]
    score = np.zeros_like(mask)
    for j, name in enumerate(batch["name"][0]):
      if name:
        h, w = scores[name].shape
        score[j, :h, :w, 0] = scores[name]
    resized = protocols.network_batch(eval_config, {"image": score, "mask": mask, "valid": valid})
    evaluation.update(jax.device_get(step(resized["image"], resized["mask"], resized["valid"])))
  return evaluation.result()


def define_flags() -> None:
  """Command-line flags (defined only when run as a command, so that importing is free);
  ``--predictions`` is required."""
  global _PREDICTIONS, _DATASET, _BUILDER_CONFIG, _SPLIT, _THRESHOLD, _DATA_DIR, _MANUAL_DIR, _OUT_DIR
  global _PROTOCOL
  _PREDICTIONS = flags.DEFINE_string("predictions", None, "Folder of <name>.png predictions.")
  _DATASET = flags.DEFINE_string("dataset", "nuaa_sirst", "Dataset name (nuaa_sirst, nudt_sirst, "
                                 "mdvsfa_cgan).")
  _BUILDER_CONFIG = flags.DEFINE_string("builder_config", None, "Builder config (default: the "
                                        "dataset's protocol, e.g. 50_50).")
  _SPLIT = flags.DEFINE_string("split", "test", "Split scored.")
  _THRESHOLD = flags.DEFINE_float("threshold", 0.5, "Operating threshold on scores in [0, 1].")
  _DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR).")
  _MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Raw dataset folder (official layout).")
  _PROTOCOL = flags.DEFINE_enum("protocol", protocols.DEFAULT, sorted(protocols.PROTOCOLS),
                                "Evaluation protocol (irst_jax.evaluation.protocols).")
  _OUT_DIR = flags.DEFINE_string("out_dir", None, "Writes metrics.json, roc.png, pr.png there.")
  flags.mark_flag_as_required("predictions")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compilation_cache.enable()
  from irst_jax.configs import default

  eval_config = default.get_base_config().eval
  eval_config.threshold = _THRESHOLD.value
  eval_config.protocol = _PROTOCOL.value
  data = dataset_config(_DATASET.value, _BUILDER_CONFIG.value, _DATA_DIR.value, _MANUAL_DIR.value)
  values, curves = score_folder(_PREDICTIONS.value, data, _SPLIT.value, eval_config)
  name = pathlib.Path(_PREDICTIONS.value).name
  print(f"{data.name}/{data.builder_config} {_SPLIT.value}: {int(values['images'])} images, "
        f"protocol {_PROTOCOL.value}")
  print(tables.markdown_table({name: values}))
  if _OUT_DIR.value:
    report.write_report(_OUT_DIR.value, values, curves, (), eval_config,
                        title=f"{name} on {data.name} {_SPLIT.value}")
    print(f"wrote {_OUT_DIR.value}/metrics.json, roc.png, pr.png")


if __name__ == "__main__":
  from irst_jax import platform_settings  # pylint: disable=import-outside-toplevel
  platform_settings.apply()   # XLA CPU flags, on CPU only, before JAX starts
  define_flags()
  errors.run_main(main)
