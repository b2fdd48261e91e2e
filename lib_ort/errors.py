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


class ToolchainError(OrtTurboError):
    """The Olive toolchain could not be created or does not work."""


class RuntimeUnavailable(OrtTurboError):
    """This Python cannot run an artefact: ONNX Runtime does not import, or lacks the provider asked for.

    Raised before any work (export refused, UNet/VAE left on PyTorch); the message says what to install.
    """


class NoCheckpointLoaded(OrtTurboError):
    """An export was asked for while the WebUI has no checkpoint loaded."""

    def __init__(self):
        super().__init__("no checkpoint is loaded")


class ExportBusy(OrtTurboError):
    """An export was asked for while another one runs: the two would fight for the CPU and the disk."""

    def __init__(self, running: str):
        super().__init__(f"an export is already running ({running}); try again when it is done")
        self.running = running


class DiskFull(ExportError):
    """The disk ran out of space while an export was written; nothing half-written was registered."""


class NotEnoughMemory(OptimizationError):
    """The machine has (or had) too little memory for the optimization; the message gives the numbers.
    Raised before the child starts, or when the OOM killer ended it; no artefact was written."""

    def __init__(self, message: str, *, needed_mb: float | None = None, available_mb: float | None = None):
        super().__init__(message)
        self.needed_mb = needed_mb
        self.available_mb = available_mb
