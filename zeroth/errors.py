"""zeroth's error and warning classes."""


class ZerothError(Exception):
    """Base class of zeroth's own errors."""


class EvaluationError(ZerothError, RuntimeError):
    """A loss evaluation failed (non-finite value or an exception); parameters were restored."""


class NonFiniteLossWarning(RuntimeWarning):
    """A step was skipped because an evaluated loss was NaN or infinite."""
