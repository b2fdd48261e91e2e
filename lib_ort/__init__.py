"""ORT Turbo engine: export the WebUI's UNet to ONNX, optimize it with Olive per execution
provider, and run it on ONNX Runtime.

The modules in this package import nothing from the WebUI; the adapter that talks to the WebUI
lives in ``lib_ort.webui`` and in ``scripts/``.
"""

__version__ = "0.1.0"
