"""Errors a user can cause. Each carries one clear sentence; the CLI prints it and exits 2."""


class EdgeqError(Exception):
    """Base class: the message is a single sentence meant for the user."""

    exit_code = 2


class ModelSpecError(EdgeqError):
    """The --model spec names nothing edgeq can load."""


class CheckpointError(EdgeqError):
    """A weights file is unreadable or does not fit the architecture."""


class InputShapeError(EdgeqError):
    """The input shape is malformed or the model rejects it."""


class CalibrationError(EdgeqError):
    """Calibration or evaluation data is missing, malformed or not finite."""


class RecipeError(EdgeqError):
    """Unknown recipe name or malformed recipe file."""


class BundleError(EdgeqError):
    """A quantized bundle is missing, corrupt or from an unknown format version."""


class ArtifactError(EdgeqError):
    """An exported artifact is missing, corrupt or unusable."""


class OutputError(EdgeqError):
    """The output path cannot be written."""


class TraceError(EdgeqError):
    """torch.export could not capture the model."""


class DeviceError(EdgeqError):
    """The requested compute device does not exist on this machine."""


class MetricError(EdgeqError):
    """A metric is unknown, cannot be loaded, rejects the labels or returns something that is not a number."""


class BudgetError(EdgeqError):
    """The accuracy budget cannot be met (the best model found is kept under another name)."""


class StageError(EdgeqError):
    """A stage after quantization failed; the learned model is kept under another name and the run can resume."""
