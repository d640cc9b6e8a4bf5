"""In-place changes to tensors autograd saved, inside the gradient pass (storm_ops.guidance.saved_tensors)."""

import pytest
import torch
import torch.nn.functional as F

from storm_ops.guidance.saved_tensors import CopyOnWriteSaves, writes_in_place


def _block(x, w, in_place):
    """A transformer block's residual, as Flux writes it: ``h += gate * f(norm(h))`` (the norm saved ``h``)."""
    h = x * 1.5
    update = torch.tanh(F.layer_norm(h, (h.shape[-1],)) @ w)
    if in_place:
        h += 0.5 * update
    else:
        h = h + 0.5 * update
    return (h * h).sum()


def test_an_in_place_residual_on_a_saved_tensor_gets_the_gradient_of_the_out_of_place_one():
    torch.manual_seed(0)
    x0, w = torch.randn(3, 8, dtype=torch.float64), torch.randn(8, 8, dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_block(x, w, in_place=False), x)
    x = x0.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(_block(x, w, in_place=True), x)
    x = x0.clone().requires_grad_(True)
    with CopyOnWriteSaves() as mode:
        loss = _block(x, w, in_place=True)
    (got,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(got, expected)
    assert mode.copies == 1  # h, saved by the layer norm; nothing else was overwritten


def test_writes_through_a_view_and_setitem_copy_the_saved_values_first():
    x = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    with CopyOnWriteSaves() as mode:
        h = x * 2.0
        s = h.sin()  # saves h
        h[:, :2] = 0.0  # __setitem__ on h's storage
        h.view(-1).mul_(3.0)  # through a view
        loss = s.sum() + h.sum()
    (grad,) = torch.autograd.grad(loss, x)
    expected = 2.0 * torch.cos(2.0 * x.detach()) + torch.cat([torch.zeros(4, 2), torch.full((4, 2), 6.0)], 1)
    torch.testing.assert_close(grad, expected.double())
    assert mode.copies == 1


def test_a_tensor_subclass_is_constructed_as_outside_the_mode():
    """Hosts hold quantized weights in tensor subclasses (GGUF) and unwrap them with ``torch.Tensor(weight)``."""

    class Held(torch.Tensor):
        def __new__(cls, data, *, kind):
            return super().__new__(cls, data)

        def __init__(self, data, *, kind):
            super().__init__()
            self.kind = kind

    held = Held(torch.ones(3), kind="q8")
    with CopyOnWriteSaves():
        plain = torch.Tensor(held)
    assert type(plain) is torch.Tensor and torch.equal(plain, torch.ones(3))


def test_what_writes_in_place():
    assert writes_in_place(torch.Tensor.add_, {}) and writes_in_place(torch.Tensor.__iadd__, {})
    assert writes_in_place(torch.Tensor.__setitem__, {}) and writes_in_place(torch.add, {"out": None})
    assert not writes_in_place(torch.Tensor.add, {}) and not writes_in_place(torch.Tensor.__add__, {})
