"""Exception and warning types of ``storm_ops``.

Messages say what was wrong *and* what to do about it. The ComfyUI layer (``nodes/``) adds the
node and input names a user sees; ``input_name`` lets it know which input a problem belongs to.
"""

from __future__ import annotations


class StormError(ValueError):
    """Invalid input or an impossible request.

    Parameters
    ----------
    message : str
        What is wrong and how to fix it.
    input_name : str, optional
        The user-facing input the problem belongs to (e.g. ``"subjects"``), when known.
    """

    def __init__(self, message: str, *, input_name: str | None = None):
        super().__init__(message)
        self.input_name = input_name


class ShapeError(StormError):
    """A tensor does not have the documented shape."""


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before reaching its tolerance."""
