"""Dataset statistics of the IRSTD datasets, as in ACM Fig. 3 and DNA-Net Fig. 6.

Usage::

  python -m irst_jax.data.stats --dataset=nudt_sirst [--builder_config=50_50] \\
      [--out_dir=DIR] [--data_dir=TFDS_DIR] [--manual_dir=RAW_DIR]

Prepares the dataset if needed (as training does, :func:`irst_jax.data.pipeline.load_builder`),
then, per split and for ``all`` (the union of the splits, each image counted once by name, so
MDvsFA-cGAN's ``train_half`` / ``val_half`` do not count twice), prints a table of:

* images: number of images;
* sizes: the distinct image sizes H x W (pixels) with their counts;
* targets per image: targets are the 8-connected components of the mask
  (``skimage.measure.label``, connectivity 2, as the Pd / Fa metrics define targets);
  the share of images with 0, 1, 2, 3 and >= 4 targets and the total;
* target size: pixels per target (min / median / mean / max) and as a percentage of its
  image's area (median, and the share of targets of at most 0.02% of the image, the
  statistic quoted by the ACM paper);
* target brightness percentile rank: for each target, the percentage of its image's pixels
  (all of them, the target's included) whose grey level is <= the target's *maximum* grey
  level. 100 means the target holds the brightest pixel of its image (ACM Fig. 3(c): "only
  35% targets are the brightest in images"); the table gives the median and the share of
  targets at 100.

and writes PNG histograms of targets per image, target size (pixels), target area (% of the
image) and brightness rank to ``out_dir`` (default ``dataset_stats/<dataset>_<config>``),
one bar series a split plus ``all``.

The library part (:func:`image_targets`, :func:`split_statistics`, :func:`format_table`,
:func:`save_histograms`) works on plain ``{'image', 'mask', 'name'}`` examples: ``image``
uint8 (H, W, 1) or (H, W), ``mask`` (H, W, 1) or (H, W), target where > 0.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np
from absl import app, flags
from skimage import measure

from irst_jax import errors, platform_settings

#: Target area, as % of the image, at or below which ACM counts a target as tiny.
TINY_AREA_PERCENT = 0.02


@dataclasses.dataclass(frozen=True)
class Target:
  """One target (8-connected component of a mask).

  Attributes:
    area: pixels.
    area_percent: ``100 * area / (H * W)``.
    brightness_rank: percentile rank (0..100] of the target's maximum grey level among all
      pixels of its image: ``100 * #(pixels <= max) / (H * W)``.
  """

  area: int
  area_percent: float
  brightness_rank: float


def _squeeze(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 2:
    raise ValueError(f"expected an (H, W) or (H, W, 1) array, got shape {x.shape}")
  return x


def image_targets(image: np.ndarray, mask: np.ndarray) -> list[Target]:
  """The targets of one image, in raster order of their first pixel.

  Args:
    image: grey levels, (H, W) or (H, W, 1).
    mask: (H, W) or (H, W, 1); target pixels are > 0.
  """
  image, mask = _squeeze(image), _squeeze(mask)
  if image.shape != mask.shape:
    raise ValueError(f"image {image.shape} and mask {mask.shape} differ in size")
  labels = measure.label(mask > 0, connectivity=2)
  n_pixels = image.size
  sorted_grey = np.sort(image.ravel())
  targets = []
  for k in range(1, int(labels.max()) + 1):
    sel = labels == k
    area = int(sel.sum())
    peak = image[sel].max()
    at_or_below = int(np.searchsorted(sorted_grey, peak, side="right"))
    targets.append(Target(
        area=area,
        area_percent=100.0 * area / n_pixels,
        brightness_rank=100.0 * at_or_below / n_pixels,
    ))
  return targets


@dataclasses.dataclass
class SplitStatistics:
  """Statistics of a set of images (see the module docstring for the definitions).

  Attributes:
    num_images: images.
    sizes: (H, W) -> number of images of that size.
    targets_per_image: one count a image.
    targets: every target of every image.
  """

  num_images: int = 0
  sizes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  targets_per_image: list[int] = dataclasses.field(default_factory=list)
  targets: list[Target] = dataclasses.field(default_factory=list)

  def add(self, image: np.ndarray, mask: np.ndarray) -> None:
    image = _squeeze(image)
    ts = image_targets(image, mask)
    self.num_images += 1
    self.sizes[image.shape] += 1
    self.targets_per_image.append(len(ts))
    self.targets.extend(ts)

  @property
  def areas(self) -> np.ndarray:
    return np.array([t.area for t in self.targets], dtype=np.int64)

  @property
  def area_percents(self) -> np.ndarray:
    return np.array([t.area_percent for t in self.targets], dtype=np.float64)

  @property
  def brightness_ranks(self) -> np.ndarray:
    return np.array([t.brightness_rank for t in self.targets], dtype=np.float64)


def split_statistics(
    splits: Mapping[str, Iterable[Mapping[str, np.ndarray]]]
) -> dict[str, SplitStatistics]:
  """Statistics per split and for ``'all'`` (images counted once by ``name`` across splits).

  Args:
    splits: split name -> examples ``{'image', 'mask', 'name'}`` (``name`` str or bytes).
  """
  out: dict[str, SplitStatistics] = {}
  total = SplitStatistics()
  seen: set = set()
  for split, examples in splits.items():
    st = SplitStatistics()
    for ex in examples:
      st.add(ex["image"], ex["mask"])
      name = ex["name"]
      if name not in seen:
        seen.add(name)
        total.add(ex["image"], ex["mask"])
    out[split] = st
  out["all"] = total
  return out


def _share(values: Sequence[bool]) -> str:
  values = np.asarray(values)
  return f"{100.0 * values.mean():.1f}%" if values.size else "-"


def _fmt(x: float) -> str:
  return f"{x:.4g}"


def format_table(stats: Mapping[str, SplitStatistics], title: str = "") -> str:
  """A plain-text table, one column a split (and ``all``)."""
  cols = list(stats)
  rows: list[tuple[str, list[str]]] = []

  def row(label, fn):
    rows.append((label, [fn(stats[c]) for c in cols]))

  row("images", lambda s: str(s.num_images))
  row("distinct sizes H x W", lambda s: str(len(s.sizes)))
  row("most common sizes", lambda s: ", ".join(
      f"{h}x{w}:{n}" for (h, w), n in s.sizes.most_common(3)))
  row("targets", lambda s: str(len(s.targets)))
  for k in range(4):
    row(f"images with {k} targets", lambda s, k=k: _share(np.array(s.targets_per_image) == k))
  row("images with >=4 targets", lambda s: _share(np.array(s.targets_per_image) >= 4))
  row("max targets per image", lambda s: str(max(s.targets_per_image, default=0)))
  for label, fn in [("min", np.min), ("median", np.median), ("mean", np.mean), ("max", np.max)]:
    row(f"target size px, {label}",
        lambda s, fn=fn: _fmt(float(fn(s.areas))) if s.targets else "-")
  row("target area %, median",
      lambda s: _fmt(float(np.median(s.area_percents))) if s.targets else "-")
  row(f"targets <= {TINY_AREA_PERCENT}% of image",
      lambda s: _share(s.area_percents <= TINY_AREA_PERCENT))
  row("brightness rank, median",
      lambda s: _fmt(float(np.median(s.brightness_ranks))) if s.targets else "-")
  row("brightest in image (rank 100)", lambda s: _share(s.brightness_ranks >= 100.0))

  width0 = max(len(r[0]) for r in rows)
  widths = [max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(cols)]
  lines = [title] if title else []
  lines.append(" | ".join([" " * width0] + [c.rjust(w) for c, w in zip(cols, widths)]))
  lines.append("-+-".join(["-" * width0] + ["-" * w for w in widths]))
  for label, vals in rows:
    lines.append(" | ".join([label.ljust(width0)] + [v.rjust(w) for v, w in zip(vals, widths)]))
  return "\n".join(lines)


def save_histograms(
    stats: Mapping[str, SplitStatistics], out_dir: str | pathlib.Path, prefix: str = ""
) -> list[pathlib.Path]:
  """Writes the four PNG histograms (percent of images / targets per bin); returns paths."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  cols = list(stats)
  max_area = max([int(s.areas.max()) for s in stats.values() if s.targets] + [1])
  max_pct = max([float(s.area_percents.max()) for s in stats.values() if s.targets] + [0.01])
  specs = [
      ("targets_per_image", "targets per image (8-connected)", "% of images",
       lambda s: np.minimum(np.array(s.targets_per_image), 6), np.arange(-0.5, 7.5, 1.0)),
      ("target_size_pixels", "target size (pixels)", "% of targets",
       lambda s: s.areas, np.unique(np.geomspace(1, max_area + 1, 25).round())),
      ("target_area_percent", "target area (% of the image)", "% of targets",
       lambda s: s.area_percents, np.linspace(0, max_pct * 1.0001, 26)),
      ("brightness_rank", "target brightness percentile rank (max grey level)", "% of targets",
       lambda s: s.brightness_ranks, np.linspace(0, 100.0001, 21)),
  ]
  paths = []
  for key, xlabel, ylabel, get, bins in specs:
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in cols:
      vals = np.asarray(get(stats[c]), dtype=np.float64)
      if vals.size == 0:
        continue
      weights = np.full(vals.shape, 100.0 / vals.size)
      ax.hist(vals, bins=bins, weights=weights, histtype="step", linewidth=1.5, label=c)
    if key == "target_size_pixels":
      ax.set_xscale("log")
    if key == "targets_per_image":
      ax.set_xticks(range(7), ["0", "1", "2", "3", "4", "5", ">=6"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{prefix} {key.replace('_', ' ')}".strip())
    ax.legend()
    fig.tight_layout()
    path = out_dir / f"{prefix + '_' if prefix else ''}{key}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


# -- command line ---------------------------------------------------------------------------

_DATASET = flags.DEFINE_string("dataset", "nuaa_sirst", "Dataset name (irst_jax.data.builders).")
_BUILDER_CONFIG = flags.DEFINE_string(
    "builder_config", None, "Builder config (default: the builder's default, e.g. 50_50).")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Where to write the PNGs (default: dataset_stats/<dataset>_<config>).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's).")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Raw data folder in the official layout (default: searched).")


def compute(dataset: str, builder_config: str | None = None, data_dir: str | None = None,
            manual_dir: str | None = None) -> tuple[str, dict[str, SplitStatistics]]:
  """(builder config used, statistics per split and 'all') of a dataset, preparing it if needed."""
  from irst_jax.data import builders, pipeline  # pylint: disable=import-outside-toplevel

  if dataset not in builders.BUILDERS:
    raise ValueError(f"Unknown dataset {dataset!r}; known: {sorted(builders.BUILDERS)}.")
  cfg = pipeline.default_dataset_config()
  cfg.name = dataset
  cfg.builder_config = builder_config or builders.BUILDERS[dataset].DEFAULT_CONFIG_NAME
  cfg.data_dir = data_dir
  cfg.manual_dir = manual_dir
  builder = pipeline.load_builder(cfg)
  data = builder.as_data_source()

  def examples(source):
    for i in range(len(source)):
      yield source[i]

  return cfg.builder_config, split_statistics({s: examples(data[s]) for s in sorted(data)})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from irst_jax import compilation_cache  # pylint: disable=import-outside-toplevel
  compilation_cache.enable()   # every command uses the persistent cache
  config, stats = compute(_DATASET.value, _BUILDER_CONFIG.value, _DATA_DIR.value,
                          _MANUAL_DIR.value)
  prefix = f"{_DATASET.value}_{config}"
  print(format_table(stats, title=f"{_DATASET.value} / {config}"))
  out_dir = _OUT_DIR.value or str(pathlib.Path("dataset_stats") / prefix)
  for path in save_histograms(stats, out_dir, prefix=prefix):
    print(f"wrote {path}")


if __name__ == "__main__":
  platform_settings.apply()   # XLA CPU flags, on CPU only, before JAX starts
  errors.run_main(main)
