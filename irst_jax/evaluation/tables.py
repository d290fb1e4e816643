"""Text of evaluation results: the one-line summary and the markdown tables.

The one place that formats metric values for people (training logs, ``--mode=eval``,
``python -m irst_jax.score``, the experiments' result tables), so every table prints a
number the same way: ``Fa`` (a fraction of pixels) multiplied by 1e6 with two decimals, as
the field reports it ("x1e-6"), integers as they are, other numbers with four decimals.
"""
from __future__ import annotations

import numbers
from typing import Mapping, Sequence

__all__ = ["TABLE_KEYS", "format_cell", "metrics_line", "markdown_table"]

#: The columns of the evaluation table, in order (keys of
#: :func:`irst_jax.evaluation.curves.summary`).
TABLE_KEYS = ("IoU", "nIoU", "Pd", "Fa", "AUC", "AP", "F-measure", "F-area")


def _heading(key: str) -> str:
  return "Fa (x1e-6)" if key == "Fa" else key


def format_cell(key: str, value) -> str:
  """One table cell: ``Fa`` x1e6 with 2 decimals, integers as they are, other numbers with
  4 decimals (NaN prints ``nan``), anything else as ``str``."""
  if key == "Fa":
    return f"{value * 1e6:.2f}"
  if isinstance(value, numbers.Integral) and not isinstance(value, bool):
    return str(value)
  if isinstance(value, numbers.Real):
    return f"{value:.4f}"
  return str(value)


def metrics_line(values: Mapping[str, float]) -> str:
  """``'IoU 0.6940 nIoU 0.6800 Pd 0.9200 Fa 22.70e-6'`` (Fa shown x1e-6) of a dict with
  those four keys (more are ignored).

  Raises:
    KeyError: a key is missing.
  """
  return (f"IoU {values['IoU']:.4f} nIoU {values['nIoU']:.4f} Pd {values['Pd']:.4f} "
          f"Fa {values['Fa'] * 1e6:.2f}e-6")


def markdown_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str] = TABLE_KEYS,
                   first_column: str = "method") -> str:
  """A markdown table: one row per ``name: values`` of `rows`, the first cell the name, then
  ``values[key]`` for each key of `columns` (:func:`format_cell`; the ``Fa`` column is
  headed ``Fa (x1e-6)``), as ``mean +/- std`` where the row also has ``key_std`` (a run of
  several seeds, :mod:`irst_jax.evaluation.seeds`).  No trailing newline.

  Raises:
    KeyError: a row lacks a column's key.
  """
  head = [first_column] + [_heading(k) for k in columns]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, values in rows.items():
    cells = [format_cell(k, values[k]) + (f" +/- {format_cell(k, values[k + '_std'])}"
                                          if k + "_std" in values else "") for k in columns]
    lines.append("| " + " | ".join([str(name)] + cells) + " |")
  return "\n".join(lines)
