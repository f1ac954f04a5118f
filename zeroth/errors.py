"""zeroth's error and warning classes.

Every warning zeroth issues derives from :class:`ZerothWarning`, so one filter silences or
escalates them all::

    import warnings, zeroth
    warnings.simplefilter("error", zeroth.ZerothWarning)
"""


class ZerothError(Exception):
    """Base class of zeroth's own errors."""


class EvaluationError(ZerothError, RuntimeError):
    """A loss evaluation failed; parameters were restored before it was raised.

    Raised for a NaN/inf loss (:func:`zeroth.optim.check_finite`, ``nan_policy="raise"``) and,
    as its subclass :class:`~zeroth.blackbox.ProgramError`, for a black-box program that
    crashed, timed out or returned malformed or non-finite output. Also a ``RuntimeError``,
    so existing ``except RuntimeError`` handlers keep working.
    """


class ZerothWarning(UserWarning):
    """Base class of every warning zeroth issues."""


class NonFiniteLossWarning(ZerothWarning, RuntimeWarning):
    """A step was skipped because an evaluated loss was NaN or infinite (``nan_policy="skip"``).

    Also a ``RuntimeWarning``; parameters, optimizer state and generator are as before the step.
    """
