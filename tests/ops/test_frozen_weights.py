"""Input gradients through inference-tensor weights without copying them (storm_ops.guidance.frozen_weights)."""

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from storm_ops.guidance.frozen_weights import FrozenWeights


class Block(nn.Module):
    """The layer kinds of a diffusion UNet: convolutions, GroupNorm, LayerNorm, linear, attention."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(4, 32, 3, padding=1)
        self.gn = nn.GroupNorm(8, 32)
        self.conv_down = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=4)
        self.ln = nn.LayerNorm(32)
        self.q = nn.Linear(32, 32, bias=False)
        self.k = nn.Linear(16, 32, bias=False)
        self.out = nn.Linear(32, 32)
        self.conv1d = nn.Conv1d(32, 8, 3, padding=1, dilation=1)

    def forward(self, x, context):
        h = F.silu(self.gn(self.conv_in(x)))
        h = self.conv_down(h)
        b, c, hh, ww = h.shape
        t = self.ln(h.flatten(2).transpose(1, 2))
        attn = (self.q(t) @ self.k(context).transpose(1, 2) / 32 ** 0.5).softmax(-1)
        out = self.out(attn @ self.k(context))
        out += t  # an in-place residual on a layer's output, as the host's blocks write it
        t = out
        return self.conv1d(t.transpose(1, 2)), attn


def _inference_block(seed=0):
    torch.manual_seed(seed)
    with torch.inference_mode():
        block = Block().double()
        # weights made (and held) inside inference mode; random norm scales too, not PyTorch's ones
        block.load_state_dict({k: torch.randn_like(v).double() * 0.5 for k, v in Block().state_dict().items()})
    assert all(p.is_inference() for p in block.parameters())
    return block


def _normal_copy(block):
    copy = Block().double()
    copy.load_state_dict({k: v.clone() for k, v in block.state_dict().items()})
    copy.requires_grad_(False)
    return copy


def _grad(block, x, context, mode=None):
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        if mode is None:
            out, attn = block(xg, context)
        else:
            with mode:
                out, attn = block(xg, context)
        loss = out.square().mean() + attn.amax(-1).mean()
        return torch.autograd.grad(loss, xg)[0]


def test_input_gradient_matches_a_normal_copy_of_the_weights_and_copies_nothing():
    block = _inference_block()
    x, context = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    expected = _grad(_normal_copy(block), x, context)
    mode = FrozenWeights()
    got = _grad(block, x, context, mode)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert mode.copied == 0 and mode.copied_bytes == 0
    # conv_in, group norm, conv_down, layer norm, q, out, conv1d; k(context) needs no gradient: a constant
    assert mode.fast == 7


def test_without_the_mode_autograd_refuses_the_inference_weights():
    block = _inference_block()
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        _grad(block, torch.randn(1, 4, 8, 8).double(), torch.randn(1, 5, 16).double())


def test_gradient_is_right_for_each_covered_operation_in_float64():
    torch.manual_seed(1)
    with torch.inference_mode():
        w_lin, b_lin = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
        w_conv = torch.randn(6, 2, 3, 3, dtype=torch.float64)
        w_norm, b_norm = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    cases = {
        "linear": lambda x: F.linear(x.flatten(1)[:, :5], w_lin, b_lin),
        "conv2d": lambda x: F.conv2d(x, w_conv, None, stride=2, padding=(1, 0), dilation=1, groups=2),
        "group_norm": lambda x: F.group_norm(F.conv2d(x, w_conv.clone(), groups=2), 3, w_norm, b_norm),
        "layer_norm": lambda x: F.layer_norm(x.flatten(2)[..., :6], (6,), w_norm, bias=b_norm),
        "rms_norm": lambda x: F.rms_norm(x.flatten(2)[..., :6], (6,), w_norm, eps=1e-6),
        "scale": lambda x: x * w_norm[:4].reshape(4, 1, 1),
        "scale of a broadcast input": lambda x: w_conv[:, :1] * x[:1, :1, :3, :3],
    }
    for name, fn in cases.items():
        x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)

        def wrapped(x, fn=fn, name=name):
            with FrozenWeights() as mode:
                out = fn(x)
            assert mode.fast >= 1 and mode.copied == 0, name
            return out

        assert torch.autograd.gradcheck(wrapped, (x,)), name


def test_uncovered_operations_fall_back_to_copies_and_are_counted():
    with torch.inference_mode():
        scale = torch.full((3,), 2.0)
    x = torch.ones(3, requires_grad=True)
    with FrozenWeights() as mode:
        y = (x / scale).sum()  # div saves `scale` for x's gradient
    (grad,) = torch.autograd.grad(y, x)
    assert grad.tolist() == [0.5, 0.5, 0.5]
    assert mode.copied == 1 and mode.copied_bytes == 12


def test_a_constant_layer_output_can_take_an_in_place_update_that_needs_a_gradient():
    """Flux's text stream: ``txt = txt_in(context)`` is a constant (a linear layer with bias on a 3-d input
    returns a view of its 2-d result), then ``txt += f(image)`` needs a gradient. Stock autograd allows it,
    so the mode must too, and get the gradient right."""
    with torch.inference_mode():
        weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        bias = torch.tensor([0.5, -0.5])
    context = torch.ones(1, 3, 2)
    x = torch.tensor([[[0.5, -1.0]]], requires_grad=True)
    with FrozenWeights():
        txt = F.linear(context, weight, bias)
        txt += x.square()
        loss = (txt * txt).sum()
    (grad,) = torch.autograd.grad(loss, x)
    expected = 3 * 2 * (torch.tensor([[[3.5, 6.5]]]) + x.detach().square()) * 2 * x.detach()
    torch.testing.assert_close(grad, expected)


def test_no_grad_and_normal_weights_pass_through_untouched():
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    with FrozenWeights() as mode:
        y = lin(x)  # a trainable weight keeps stock autograd (its gradient is not dropped)
        with torch.no_grad():
            lin(x)
    y.sum().backward()
    assert lin.weight.grad is not None
    assert mode.fast == 0 and mode.copied == 0


class CastBlock(nn.Module):
    """Layers that cast their weights on every call, as the host's manual-cast and low-VRAM layers do:
    ``Tensor.to`` (same device) and ``empty_like(...).copy_`` (the host's cast to another device), and
    optionally a LoRA-style patch added in place to the cast weight."""

    def __init__(self, patch: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.lin = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.patch = patch
        self.casts: list = []  # weak references to every cast this block made

    def cast(self, t, like, copy_path=False):
        if copy_path:
            out = torch.empty_like(t, dtype=like.dtype)
            out.copy_(t)
        else:
            out = t.to(dtype=like.dtype)
        self.casts.append(weakref.ref(out))
        return out

    def forward(self, x):
        w = self.cast(self.conv.weight, x)
        if self.patch:
            w += 0.25  # what a LoRA weight function does to the cast copy
        h = F.conv2d(x, w, self.cast(self.conv.bias, x, copy_path=True), padding=1)
        h = F.group_norm(h, 2, self.cast(self.gn.weight, x), self.cast(self.gn.bias, x))
        t = h.flatten(2).transpose(1, 2)
        t = F.linear(t, self.cast(self.lin.weight, x, copy_path=True), self.cast(self.lin.bias, x))
        return F.layer_norm(t, (8,), self.cast(self.ln.weight, x), self.cast(self.ln.bias, x))


def _cast_block(patch=False):
    torch.manual_seed(2)
    with torch.inference_mode():
        block = CastBlock(patch)  # float32 weights, computed in float64: every weight is cast per call
        block.load_state_dict({k: torch.randn_like(v) * 0.5 for k, v in CastBlock().state_dict().items()})
    return block


def test_weights_the_host_casts_per_call_are_cast_again_in_backward_not_kept():
    block = _cast_block()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    reference = _normal_copy_of(block)
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        with FrozenWeights() as mode:
            out = block(xg)
        gc.collect()
        # every cast copy is freed once the forward is done with it: backward casts again from the source
        assert block.casts and all(ref() is None for ref in block.casts)
        got = torch.autograd.grad(out.square().sum(), xg)[0]
    torch.testing.assert_close(got, _grad_of(reference, x))
    assert mode.fast == 4 and mode.recast == 4 and mode.copied == 0


def test_a_cast_changed_in_place_is_kept_as_it_is():
    block = _cast_block(patch=True)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        with FrozenWeights() as mode:
            out = block(xg)
        got = torch.autograd.grad(out.square().sum(), xg)[0]
    # the patched convolution weight is no cast of its source any more: recasting it would drop the patch
    torch.testing.assert_close(got, _grad_of(_normal_copy_of(block), x))
    assert mode.recast == 3 and mode.copied == 0


def _normal_copy_of(block):
    copy = CastBlock(block.patch)
    copy.load_state_dict({k: v.clone() for k, v in block.state_dict().items()})
    return copy.requires_grad_(False)


def _grad_of(block, x):
    xg = x.clone().requires_grad_(True)
    return torch.autograd.grad(block(xg).square().sum(), xg)[0]


def test_a_weight_computed_from_constants_is_computed_again_in_backward_not_kept():
    """A "scaled fp8" layer: ``linear(x, w8.to(x.dtype) * scale)``. The scaled weight is a constant of the
    pass (made from the stored weight and its scale alone): the layer keeps how to compute it, not the copy."""
    torch.manual_seed(3)
    with torch.inference_mode():
        weight = torch.randn(8, 6) * 0.3
        scale = weight.abs().max() / 448.0
        stored = (weight / scale).to(torch.float8_e4m3fn)
    made: list = []

    def layer(x):
        w = stored.to(x.dtype) * scale.to(x.dtype)
        made.append(weakref.ref(w))
        return F.linear(x, w)

    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        with FrozenWeights() as mode:
            out = layer(xg)
        gc.collect()
        assert made and made[0]() is None  # freed after the forward
        got = torch.autograd.grad(out.square().sum(), xg)[0]
    dense = stored.to(torch.float64) * scale.double()
    torch.testing.assert_close(got, 2 * (x @ dense.T) @ dense)
    assert mode.fast == 1 and mode.recast == 1 and mode.copied == 0


def test_a_copy_of_a_constant_made_to_require_a_gradient_is_the_variable():
    """The guided sampler's own first step: ``z.detach().clone().requires_grad_()`` of the host's (inference)
    latent, inside the mode. It is computed from a constant, but it is the variable: never a constant."""
    with torch.inference_mode():
        z = torch.randn(2, 3)
        weight = torch.randn(4, 3)
    with torch.inference_mode(False), torch.enable_grad(), FrozenWeights():
        zg = z.detach().clone().requires_grad_(True)
        loss = F.linear(zg * 2.0, weight).square().sum()
        (grad,) = torch.autograd.grad(loss, zg)
    torch.testing.assert_close(grad, 8 * (z @ weight.T) @ weight)
