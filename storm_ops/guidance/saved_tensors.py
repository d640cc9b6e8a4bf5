"""Gradients through networks that change, in place, tensors autograd saved for backward.

Transformer blocks add their residuals in place (Flux: ``img += gate * attn(norm(img))``): the ``img`` that the
norm saved for its backward is overwritten, and autograd refuses to differentiate ("a variable needed for gradient
computation has been modified by an inplace operation"). :class:`CopyOnWriteSaves` lets such a forward be
differentiated: every tensor autograd saves is remembered by its storage, and an in-place operation on a storage
that holds saved tensors first copies those saved values, which backward then reads. Only what is overwritten is
copied, only once.

This is what ``torch.autograd.graph.allow_mutation_on_saved_tensors`` does with a dispatch mode; that dispatch mode
also changes what ``torch.Tensor(subclass_instance)`` returns (the subclass, whose ``__init__`` then fails), which
breaks hosts that hold weights in tensor subclasses (GGUF-quantized models). A function mode sees the Python-level
in-place operations a host writes and leaves constructors alone.
"""

from __future__ import annotations

import weakref

import torch
from torch.overrides import TorchFunctionMode

#: in-place dunder methods (``x += y``, ``x[i] = y``); other in-place methods end with ``_``
_IN_PLACE_DUNDERS = frozenset({"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                               "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__",
                               "__irshift__", "__imatmul__"})


def writes_in_place(func, kwargs: dict) -> bool:
    """Whether calling ``func`` writes into a tensor it was given (``add_``, ``x += y``, ``x[i] = y``, ``out=``)."""
    name = getattr(func, "__name__", "")
    return ("out" in kwargs or name in _IN_PLACE_DUNDERS
            or (name.endswith("_") and not name.endswith("__")))


def _storage_key(t: torch.Tensor):
    return t.untyped_storage().data_ptr(), t.device


class _Saved:
    """A tensor autograd saved, and the copy of its value taken before it was overwritten (if it was)."""

    __slots__ = ("tensor", "copy", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.copy = tensor, None

    def value(self) -> torch.Tensor:
        return self.tensor if self.copy is None else self.copy


class CopyOnWriteSaves(TorchFunctionMode):
    """Inside the block, in-place changes to tensors autograd saved copy the saved values first (see the module
    docstring); :attr:`copies` counts the saved tensors copied. Saved-tensor hooks entered inside this block take
    over from it (e.g. hooks that already keep a copy elsewhere)."""

    def __init__(self):
        super().__init__()
        self.copies = 0
        self._saved: dict[tuple, list[weakref.ref]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _Saved.value)

    def __enter__(self):
        self._hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor) -> _Saved:
        saved = _Saved(tensor)
        if not tensor.is_inference():  # an inference tensor cannot change under autograd
            refs = self._saved.setdefault(_storage_key(tensor), [])
            refs[:] = [r for r in refs if r() is not None]
            refs.append(weakref.ref(saved))
        return saved

    def _before_write(self, target) -> None:
        if not isinstance(target, torch.Tensor) or target.is_inference():
            return
        refs = self._saved.get(_storage_key(target))
        if not refs:
            return
        with torch.no_grad():
            for ref in refs:
                saved = ref()
                if saved is not None and saved.copy is None:
                    saved.copy = saved.tensor.clone()
                    self.copies += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._saved and writes_in_place(func, kwargs):
            out = kwargs.get("out")
            for target in (out if isinstance(out, (tuple, list)) else (out,)) if out is not None else args[:1]:
                self._before_write(target)
        return func(*args, **kwargs)
