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

    Raised for a NaN/inf loss (:func:`zeroth.optim.check_finite`, ``on_failure="raise"``) and,
    as its subclass :class:`~zeroth.blackbox.ProgramError`, for a black-box program that
    crashed, timed out or returned malformed or non-finite output. Also a ``RuntimeError``,
    so existing ``except RuntimeError`` handlers keep working.
    """


class ZerothWarning(UserWarning):
    """Base class of every warning zeroth issues."""


class ZerothDeprecationWarning(ZerothWarning, DeprecationWarning):
    """A renamed or retired name or argument value was used; it keeps working for one release.

    Also a ``DeprecationWarning``, so Python's default filters treat it as one (shown in
    ``__main__`` and under test runners, hidden elsewhere) and ``-W error::DeprecationWarning``
    escalates it; the message names the replacement.
    """


def warn_deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Issue a :class:`ZerothDeprecationWarning`: ``old`` is deprecated, use ``new``.

    Args:
        old: the deprecated spelling, as the user wrote it (e.g. ``"zeroth.Sequential"``).
        new: its replacement (e.g. ``"zeroth.SequentialEvaluator"``).
        stacklevel: passed to :func:`warnings.warn` (3: the caller of the function that warns).
    """
    import warnings

    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        ZerothDeprecationWarning,
        stacklevel=stacklevel,
    )


class NonFiniteLossWarning(ZerothWarning, RuntimeWarning):
    """A step was skipped because an evaluated loss was NaN or infinite (``on_failure="omit"``).

    Also a ``RuntimeWarning``; parameters, optimizer state and generator are as before the step.
    """


def add_note(err: BaseException, note: str) -> None:
    """Append ``note`` to ``err.__notes__``, as ``BaseException.add_note`` does (PEP 678).

    ``BaseException.add_note`` exists from Python 3.11 on; zeroth supports 3.10, where calling
    it raised ``AttributeError`` in place of the error being reported. This helper writes the
    same attribute on every version: Python 3.11+ prints the notes under the traceback, and on
    3.10 they are kept in ``err.__notes__`` for handlers to read.

    Args:
        err: the exception being reported.
        note: one line of context (which evaluation, worker or call failed).

    Raises:
        TypeError: ``note`` is not a string, or ``err.__notes__`` exists but is not a list
            (the checks ``BaseException.add_note`` makes).
    """
    if not isinstance(note, str):
        raise TypeError(f"note must be a str, not {type(note).__name__}")
    notes = getattr(err, "__notes__", None)
    if notes is None:
        notes = []
        # setattr: the type checker targets 3.10, where BaseException declares no __notes__
        setattr(err, "__notes__", notes)  # noqa: B010
    elif not isinstance(notes, list):
        raise TypeError("Cannot add note: __notes__ is not a list")
    notes.append(note)
