"""Serving: export a workdir's checkpoint (export), run a detector (detector), the predict command
(predict; images, and videos through video), the model profiler (profile).

Imports run one way: ``detector`` imports nothing of irst_jax (a copy of it is the exported
artifact's ``irst_detector.py``); ``export`` and ``draw`` import ``detector``; ``video``
imports ``draw``; ``predict`` imports them all; ``profile`` imports the models and losses.
"""
