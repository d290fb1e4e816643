"""Evaluation: the field's metrics on device, curves, tables, reports, scoring and baselines.

* ``components``: 8-connected component labelling (dense and compacted), jit-compatible.
* ``metrics``: IoU, nIoU, Pd, Fa and F-measure statistics per image and their accumulator.
* ``protocols``: the evaluation protocols (``eval.protocol``: basicirstd, basicirstd_2023,
  dnanet): Fa rule, 256x256 resize, own threshold sweep.
* ``curves``: pixel ROC / PR (AUC, AP), target-level ROC, F-area; one batch's outputs.
* ``tables``: the one-line summary and the markdown tables of results.
* ``report``: metrics.json, ROC / PR plots, qualitative grid (matplotlib imported to draw).
* ``score``: the ``python -m irst_jax.score`` command (another method's PNG predictions).
* ``baselines``: Top-Hat, Max-Median and MPCM filters evaluated by the same code.

Imports run one way: ``components`` <- ``metrics`` <- ``curves`` <- ``report``
(``protocols``, importing none of them, is read by ``curves``, ``report``, ``score``,
``baselines``, ``irst_jax.train`` and ``irst_jax.config_checks``); ``tables``
imports nothing of irst_jax; none of these imports ``irst_jax.train`` (which imports them);
``score`` and ``baselines`` import ``irst_jax.data`` and the modules above.
"""
