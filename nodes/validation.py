"""Checks of a node's inputs against its own ``INPUT_TYPES``, which stays the one owner of the bounds.

ComfyUI checks a widget's ``min``/``max`` only for a value typed into the widget; a value that
arrives through a link (from a primitive or a math node) reaches the node unchecked, and the fork
checks no optional input at all. :func:`in_declared_range` repeats the check when the node runs.

:func:`validate_text_inputs` is what a node's ``VALIDATE_INPUTS`` returns: the syntax of its text
widgets, checked when the prompt is queued so the frontend marks the node before anything runs.
The hosts pass only the inputs named in the signature, a linked one as ``None``; a node names only
its STRING inputs there, never ``**kwargs`` or ``input_types``, because the hosts skip their own
range, list and type checks for the inputs ``VALIDATE_INPUTS`` takes.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from numbers import Real

from ..storm_ops.errors import StormError
from .errors import StormNodeError, format_error

NUMERIC_TYPES = ("INT", "FLOAT")


def declared_ranges(node_cls) -> dict[str, tuple[float | None, float | None]]:
    """``name -> (min, max)`` of the node's INT and FLOAT inputs (``None`` where a bound is not declared)."""
    ranges = {}
    types = node_cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in (types.get(section) or {}).items():
            if isinstance(spec, (list, tuple)) and len(spec) > 1 and spec[0] in NUMERIC_TYPES:
                options = spec[1] or {}
                ranges[name] = (options.get("min"), options.get("max"))
    return ranges


def _number(value) -> str:
    return f"{value:.15g}" if isinstance(value, float) else str(value)


def check_ranges(node_cls, values: Mapping[str, object]) -> None:
    """Raise when a numeric input of ``node_cls`` in ``values`` lies outside its declared range.

    Raises
    ------
    StormNodeError
        ``"<node>: input '<name>' = <value> is outside its range [<min>, <max>]; ..."`` (NaN is
        outside every range); ``input_name`` is the input.
    """
    node = getattr(node_cls, "NODE_NAME", node_cls.__name__)
    for name, (low, high) in declared_ranges(node_cls).items():
        if name not in values or values[name] is None:
            continue
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, Real):
            raise StormNodeError(f"{node}: input '{name}' = {value!r} is not a number; connect a number.",
                                 input_name=name)
        inside = not math.isnan(value) and (low is None or value >= low) and (high is None or value <= high)
        if not inside:
            bounds = f"[{_number(low) if low is not None else '-inf'}, {_number(high) if high is not None else 'inf'}]"
            raise StormNodeError(
                f"{node}: input '{name}' = {_number(value)} is outside its range {bounds}; give a value inside "
                "it (ComfyUI checks the range of a value typed into the widget, not of one that arrives through "
                "a link).", input_name=name)


def in_declared_range(fn):
    """Decorator for a node's FUNCTION: :func:`check_ranges` on the call's arguments first."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        check_ranges(type(self), bound.arguments)
        return fn(self, *args, **kwargs)

    return run


def validate_text_inputs(node: str, **checks: tuple[object, Callable[[str], object]]) -> bool | str:
    """``True``, or the first problem as ``"<node>: input '<name>': ..."`` (a ``VALIDATE_INPUTS`` result).

    ``checks`` maps an input name to ``(value, check)``; ``check(value)`` raises :class:`StormError`.
    A value that is not a string (``None``: linked, or not in the prompt) is not checked here; the
    node checks it when it runs.
    """
    for name, (value, check) in checks.items():
        if not isinstance(value, str):
            continue
        try:
            check(value)
        except StormError as error:
            if error.input_name is None:
                error.input_name = name
            return format_error(node, error)
    return True
