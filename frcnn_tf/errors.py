"""The project's user-facing error types: one line, naming the file to fix."""


class FrcnnError(Exception):
    """An error caused by user input; printed as one line, without a traceback."""


class SpecError(FrcnnError):
    """A spec file problem, rendered as `PATH:LINE:COL: message` (1-based)."""

    def __init__(self, path, line, column, message):
        self.path = path
        self.line = line
        self.column = column
        self.message = message
        super().__init__(f"{path}:{line}:{column}: {message}")


class Int8Diverges(FrcnnError):
    """An INT8 graph whose detections do not reproduce its reference's (FP32 for calibration, Keras QAT
    for QAT, the TensorRT-form graph for the onnxruntime layout); nothing was written."""
