"""Access to ../shared/golden/*.npz (outputs of the PyTorch reference implementations)."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

GOLDEN_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "golden"


def load(name: str) -> tuple[dict, list, list, dict]:
  """Returns (state_dict, inputs NHWC, outputs NHWC, meta); skips when the file is absent."""
  path = GOLDEN_DIR / name
  if not path.exists():
    pytest.skip(f"golden file {path} not present")
  data = np.load(path)
  state = {k[len("state_dict/"):]: data[k] for k in data.files if k.startswith("state_dict/")}
  count = lambda prefix: len([k for k in data.files if k.startswith(prefix)])
  nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))
  inputs = [nhwc(data[f"input/{i}"]) for i in range(count("input/"))]
  outputs = [nhwc(data[f"output/{i}"]) for i in range(count("output/"))]
  return state, inputs, outputs, json.loads(str(data["meta"]))
