"""Top-Hat, Max-Median and MPCM (irst_jax/evaluation/baselines.py) on a split, same metric code.

  python experiments/evaluate_baselines.py [--dataset=nuaa_sirst] [--builder_config=50_50] \
      [--split=test] [--rule=dnanet] [--out=experiments/results/baselines_nuaa_sirst.md]

Images on at most ``dataset.max_eval_canvases`` (4) padded shapes, multiples of 128 (for the
NUAA-SIRST 50_50 test split these are its 4 sizes padded to 128, as before the canvases; the
padding filled by edge replication and excluded from the metrics and the thresholds), batches
of 4; operating point = the adaptive
threshold of DNA-Net eq. 14 (``--rule=eaau_net``: EAAU-Net eq. 17); curves on G / max(G)
(pixel ROC / PR from histograms; the target-level Pd-Fa sweep only with ``--target_roc``).
Prints the table and writes it to ``--out``.
"""
from __future__ import annotations

import pathlib
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import default  # noqa: E402
from irst_jax import platform_settings  # noqa: E402
from irst_jax.evaluation import baselines, curves, score, tables  # noqa: E402
from irst_jax.data import pipeline  # noqa: E402

_DATASET = flags.DEFINE_string("dataset", "nuaa_sirst", "Dataset name.")
_BUILDER_CONFIG = flags.DEFINE_string("builder_config", "50_50", "Builder config.")
_SPLIT = flags.DEFINE_string("split", "test", "Split.")
_RULE = flags.DEFINE_enum("rule", "dnanet", ["dnanet", "eaau_net"], "Adaptive threshold rule.")
_OUT = flags.DEFINE_string("out", None, "Markdown file written with the table.")
_TARGET_ROC = flags.DEFINE_bool(
    "target_roc", False, "Also sweep Pd / Fa over eval.roc_thresholds (not in the table; the "
    "filters' low thresholds give thousands of components to label, several times the cost).")


def _edge_padded(batch) -> np.ndarray:
  """Images with their zero padding replaced by edge replication (filters see no step)."""
  image, valid = batch["image"][0], batch["valid"][0]
  out = np.empty_like(image)
  for j in range(image.shape[0]):
    h, w = int(valid[j, :, 0, 0].sum()), int(valid[j, 0, :, 0].sum())
    out[j] = np.pad(image[j, :h, :w], ((0, image.shape[1] - h), (0, image.shape[2] - w), (0, 0)),
                    mode="edge") if h and w else 0.0
  return out


def evaluate(data_config, split: str, eval_config, rule: str) -> dict[str, dict[str, float]]:
  """{baseline: table numbers} on a split (images on the eval canvases, edge padding)."""
  evaluations = {name: curves.Evaluation(eval_config) for name in baselines.BASELINES}
  for i, batch in enumerate(pipeline.create_eval_iterator(data_config, split=split, batch_size=4,
                                                          num_devices=1)):
    out = jax.device_get(baselines.evaluate_batch(
        _edge_padded(batch), batch["mask"][0], batch["valid"][0], eval_config, rule))
    for name, evaluation in evaluations.items():
      evaluation.update(out[name])
    if i % 10 == 0:
      print(f"batch {i}, shape {batch['image'].shape[2:4]}", flush=True)
  return {name: e.result()[0] for name, e in evaluations.items()}


def main(argv):
  del argv
  eval_config = default.get_base_config().eval
  if not _TARGET_ROC.value:
    eval_config.roc_thresholds = ()
  data = score.dataset_config(_DATASET.value, _BUILDER_CONFIG.value, pad_multiple=128)
  start = time.perf_counter()
  rows = evaluate(data, _SPLIT.value, eval_config, _RULE.value)
  print(f"{time.perf_counter() - start:.1f} s", flush=True)
  table = tables.markdown_table(rows)
  print(table)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(table + "\n")


if __name__ == "__main__":
  platform_settings.apply()   # XLA CPU flags, on CPU only, as the entry points do
  app.run(main)
