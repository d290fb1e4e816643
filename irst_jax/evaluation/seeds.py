"""Metrics of several replicas of one run (``train.num_seeds``): mean, standard deviation, each.

A run of ``train.num_seeds = N > 1`` trains N independent replicas (replica i: seed
``train.seed + i``) and evaluates each; its records (train.log, metrics.jsonl,
best_metrics.json, the ``--mode=eval`` report) hold, for every metric key ``k`` of one
replica's evaluation (``IoU``, ``nIoU``, ``Pd``, ``Fa``, ...):

* ``k``: the mean over the replicas, so that tools reading ``IoU`` etc. read the mean (the
  best checkpoint is the one of the best mean IoU);
* ``k_std``: their sample standard deviation (``ddof = 1``: the spread one expects between
  seeds, not the deviation of these N numbers around their own mean; 0 for N = 1);
* ``k/seed_i``: replica i's value.

Imports nothing of irst_jax.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["summarize", "per_seed", "best_seed", "num_seeds", "seeds_line", "seed_key", "STD"]

#: Suffix of a standard deviation key: ``IoU_std``.
STD = "_std"

_SEED_KEY = re.compile(r"^(.*)/seed_(\d+)$")


def seed_key(key: str, index: int) -> str:
  """``'IoU/seed_3'``: the key of replica `index`'s value of metric `key`."""
  return f"{key}/seed_{index}"


def summarize(values: Sequence[Mapping[str, float]]) -> dict[str, float]:
  """The record of N replicas' metrics (a list of dicts with the same keys, replica order):
  ``k`` mean, ``k_std`` sample standard deviation (ddof 1; 0.0 for one replica) and
  ``k/seed_i`` for every key ``k`` of the first dict. NaN values propagate.

  Raises:
    ValueError: `values` is empty or its dicts have different keys.
  """
  if not values:
    raise ValueError("summarize needs the metrics of at least one replica")
  keys = list(values[0])
  for i, v in enumerate(values):
    if list(v) != keys:
      raise ValueError(f"replica {i} has metric keys {sorted(v)}, replica 0 {sorted(keys)}")
  out: dict[str, float] = {}
  for key in keys:
    column = np.array([float(v[key]) for v in values], np.float64)
    out[key] = float(np.mean(column))
    out[key + STD] = float(np.std(column, ddof=1)) if len(column) > 1 else 0.0
  for i, v in enumerate(values):
    for key in keys:
      out[seed_key(key, i)] = float(v[key])
  return out


def num_seeds(record: Mapping[str, float]) -> int:
  """The number of replicas a record holds (1 when it has no ``k/seed_i`` keys)."""
  indices = [int(m.group(2)) for m in map(_SEED_KEY.match, record) if m]
  return max(indices) + 1 if indices else 1


def per_seed(record: Mapping[str, float], key: str = "IoU") -> list[float]:
  """``[record['key/seed_0'], ...]``; ``[record[key]]`` for a one-replica record."""
  n = num_seeds(record)
  if n == 1 and seed_key(key, 0) not in record:
    return [float(record[key])]
  return [float(record[seed_key(key, i)]) for i in range(n)]


def best_seed(record: Optional[Mapping[str, float]], key: str = "IoU") -> Optional[int]:
  """The replica with the highest `key` in `record` (the first on a tie; NaN counts as
  lowest), or None when `record` is None or holds no finite value of `key`."""
  if not record:
    return None
  try:
    values = per_seed(record, key)
  except KeyError:
    return None
  finite = [(v, -i) for i, v in enumerate(values) if math.isfinite(v)]
  return -max(finite)[1] if finite else None


def seeds_line(record: Mapping[str, float], keys: Sequence[str] = ("IoU", "nIoU", "Pd", "Fa")
               ) -> Optional[str]:
  """``'over 2 seeds: IoU 0.5000 +/- 0.1414 (0.4000 0.6000) ...'`` (Fa shown x1e-6), or None for
  a one-replica record."""
  n = num_seeds(record)
  if n == 1:
    return None
  parts = []
  for key in keys:
    if key not in record:
      continue
    scale, unit, digits = (1e6, "e-6", 2) if key == "Fa" else (1.0, "", 4)
    each = " ".join(f"{v * scale:.{digits}f}" for v in per_seed(record, key))
    parts.append(f"{key} {record[key] * scale:.{digits}f}{unit} +/- "
                 f"{record.get(key + STD, math.nan) * scale:.{digits}f}{unit} ({each})")
  return f"over {n} seeds: " + ", ".join(parts)
