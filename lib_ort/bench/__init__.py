"""Measurement: benchmarks, profiles, reports and the random-weight architectures they (and the tests) run.

The WebUI never imports this package (a test checks it): what a generation needs lives in ``lib_ort``;
what only times or demonstrates it lives here and is reached through ``python -m lib_ort``.
"""
