"""Serving: export a workdir's checkpoint (export), run a detector (detector), the predict command.

Imports run one way: ``detector`` imports nothing of irst_jax (a copy of it is the exported
artifact's ``irst_detector.py``); ``export`` imports ``detector``; ``predict`` imports both.
"""
