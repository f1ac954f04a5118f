"""zeroth's error and warning classes.

Every warning zeroth issues derives from :class:`ZerothWarning`, so one filter silences or
escalates them all::

    import warnings, zeroth
    warnings.simplefilter("error", zeroth.ZerothWarning)
"""


class ZerothError(Exception):
    """Base class of zeroth's own errors."""


class EvaluationError(ZerothError, RuntimeError):
    """A loss evaluation failed (non-finite value or an exception); parameters were restored."""


class ZerothWarning(UserWarning):
    """Base class of every warning zeroth issues."""


class NonFiniteLossWarning(ZerothWarning, RuntimeWarning):
    """A step was skipped because an evaluated loss was NaN or infinite."""
