"""Stand-in of Stability-AI's ``sgm`` (generative-models at 45c443b, the commit WebUI v1.10.1 pins): its UNet only.

The WebUI builds every SDXL checkpoint's UNet from ``sgm.modules.diffusionmodules.openaimodel.UNetModel``;
sgm is not on PyPI, so the tests carry this stand-in under the same module paths and class names, with
the same state_dict keys, shapes and forward. How it was checked against the real class:
``tests/tools/check_sgm_standin.py`` and docs/architecture.md. Its package ``__init__`` (which in the
real sgm imports the training engine and the conditioners) is deliberately empty.
"""
