"""The errors the engine raises. Each carries a message a WebUI user can act on."""


class OrtTurboError(Exception):
    """Base class of every error this extension raises on purpose."""


class UnsupportedInput(OrtTurboError):
    """The artefact cannot serve these inputs; the caller should run the PyTorch UNet instead.

    ``reason`` is a short sentence for the console and the infotext.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ArtefactError(OrtTurboError):
    """An artefact is missing, incomplete, corrupt, made for another checkpoint or too new."""


class ExportError(OrtTurboError):
    """Exporting the UNet to ONNX failed."""


class OptimizationError(OrtTurboError):
    """The Olive optimization child process failed or was killed; no artefact was written."""
