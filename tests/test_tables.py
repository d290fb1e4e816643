"""irst_jax.evaluation.tables: the one-line summary and the markdown tables, written out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from irst_jax.evaluation import tables

_ROW = {"IoU": 0.69404, "nIoU": 0.68, "Pd": 0.92, "Fa": 22.7e-6, "AUC": 0.95, "AP": 0.81234,
        "F-measure": 0.7, "F-area": 0.568638, "images": 214.0}


def test_metrics_line():
  assert tables.metrics_line(_ROW) == "IoU 0.6940 nIoU 0.6800 Pd 0.9200 Fa 22.70e-6"
  assert tables.metrics_line({"IoU": float("nan"), "nIoU": 1.0, "Pd": np.float32(0.5),
                              "Fa": 0.0}) == "IoU nan nIoU 1.0000 Pd 0.5000 Fa 0.00e-6"
  with pytest.raises(KeyError, match="Fa"):
    tables.metrics_line({"IoU": 1.0, "nIoU": 1.0, "Pd": 1.0})


def test_markdown_table_evaluation_columns():
  second = dict(_ROW, IoU=np.float64(0.5), Fa=np.float64(1.234e-4))
  assert tables.markdown_table({"acm": _ROW, "top_hat": second}) == (
      "| method | IoU | nIoU | Pd | Fa (x1e-6) | AUC | AP | F-measure | F-area |\n"
      "|---|---|---|---|---|---|---|---|---|\n"
      "| acm | 0.6940 | 0.6800 | 0.9200 | 22.70 | 0.9500 | 0.8123 | 0.7000 | 0.5686 |\n"
      "| top_hat | 0.5000 | 0.6800 | 0.9200 | 123.40 | 0.9500 | 0.8123 | 0.7000 | 0.5686 |")


def test_markdown_table_other_columns():
  # summarize_run's table: an integer epoch column as it is, the metrics as everywhere else.
  rows = {"final": {"epoch": 3, "IoU": 0.25, "nIoU": 0.125, "Pd": 1.0, "Fa": 5e-7},
          "best IoU": {"epoch": 2, "IoU": 0.5, "nIoU": 0.0, "Pd": 0.75, "Fa": 0.0}}
  assert tables.markdown_table(rows, ("epoch", "IoU", "nIoU", "Pd", "Fa"), "checkpoint") == (
      "| checkpoint | epoch | IoU | nIoU | Pd | Fa (x1e-6) |\n"
      "|---|---|---|---|---|---|\n"
      "| final | 3 | 0.2500 | 0.1250 | 1.0000 | 0.50 |\n"
      "| best IoU | 2 | 0.5000 | 0.0000 | 0.7500 | 0.00 |")
  assert tables.markdown_table({}, ("Pd",)) == "| method | Pd |\n|---|---|"
  with pytest.raises(KeyError, match="AUC"):
    tables.markdown_table({"m": {"IoU": 1.0}}, ("IoU", "AUC"))
