"""Turning ``StormError`` into messages that name the node and the input."""

from __future__ import annotations

import contextlib
import functools

from ..storm_ops.errors import StormError


class StormNodeError(StormError):
    """A user-facing error: ``<node>: input '<name>': <what is wrong and what to do>``."""


def format_error(node: str, error: StormError) -> str:
    message = str(error)
    if message.startswith(node):
        message = message[len(node):].lstrip(": ")
    where = f"input '{error.input_name}': " if error.input_name else ""
    return f"{node}: {where}{message}"


@contextlib.contextmanager
def node_error_context(node: str):
    """Re-raise ``StormError`` with the node and input named (for code a node hands to the host)."""
    try:
        yield
    except StormNodeError:
        raise
    except StormError as error:
        raise StormNodeError(format_error(node, error), input_name=error.input_name) from error


def node_errors(node: str):
    """Decorator for a node's FUNCTION: re-raise ``StormError`` with the node and input named."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with node_error_context(node):
                return fn(*args, **kwargs)

        return run

    return wrap
