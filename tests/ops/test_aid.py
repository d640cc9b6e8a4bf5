"""AID / PAID attention interpolation (He et al., NeurIPS 2024), Beta schedule, warm-up, slerp/lerp."""

import math

import pytest
import torch

from storm_ops.aid.interpolation import (
    as_coefficients,
    attention,
    frame_chunks,
    interpolated_attention,
    match_token_lengths,
)
from storm_ops.aid.schedule import beta_schedule, interpolation_active, lerp, slerp, warmup_steps
from storm_ops.errors import ShapeError, StormError

HEADS = 2
DIM = 3  # per head
C = HEADS * DIM


def _rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def ref_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v with explicit loops over batch items and heads, float64."""
    b, nq, c = q.shape
    d, dv = c // heads, v.shape[-1] // heads
    out = torch.zeros(b, nq, heads * dv, dtype=torch.float64)
    for i in range(b):
        ki, vi = k[i if k.shape[0] > 1 else 0], v[i if v.shape[0] > 1 else 0]
        for h in range(heads):
            qh = q[i, :, h * d:(h + 1) * d].double()
            kh = ki[:, h * d:(h + 1) * d].double()
            vh = vi[:, h * dv:(h + 1) * dv].double()
            p = torch.softmax(qh @ kh.T / math.sqrt(d), -1)
            out[i, :, h * dv:(h + 1) * dv] = p @ vh
    return out


def ref_interpolation(q, ka, va, kb, vb, t, mode, ks=None, vs=None):
    """Closed forms of AID's inner / outer / fused attention, one frame at a time."""
    frames = []
    for i in range(q.shape[0]):
        ti = float(t[i])
        qi = q[i:i + 1]
        kai, vai, kbi, vbi = (x[i:i + 1] if x.shape[0] > 1 else x for x in (ka, va, kb, vb))

        def fuse(k, v, i=i):
            if ks is None:
                return k, v
            return torch.cat([ks[i:i + 1], k], 1), torch.cat([vs[i:i + 1], v], 1)

        if mode == "inner":
            k_hat, v_hat = (1 - ti) * kai + ti * kbi, (1 - ti) * vai + ti * vbi
            frames.append(ref_attention(qi, *fuse(k_hat, v_hat), HEADS))
        else:
            frames.append((1 - ti) * ref_attention(qi, *fuse(kai, vai), HEADS)
                          + ti * ref_attention(qi, *fuse(kbi, vbi), HEADS))
    return torch.cat(frames, 0)


def _setup(batch=3, nq=5, na=4, nb=4, ns=None, seed=0):
    """Frames' queries, endpoint keys/values (batch 1) and, if ns, the frames' own keys/values."""
    q = _rand(batch, nq, C, seed=seed)
    ka, va = _rand(1, na, C, seed=seed + 1), _rand(1, na, C, seed=seed + 2)
    kb, vb = _rand(1, nb, C, seed=seed + 3), _rand(1, nb, C, seed=seed + 4)
    ks = vs = None
    if ns is not None:
        ks, vs = _rand(batch, ns, C, seed=seed + 5), _rand(batch, ns, C, seed=seed + 6)
    return q, ka, va, kb, vb, ks, vs


# ------------------------------------------------------------------------------------------
# attention forms


def test_plain_attention_matches_the_per_head_reference():
    q, k, v = _rand(2, 5, C), _rand(2, 7, C, seed=1), _rand(2, 7, 2 * HEADS, seed=2)  # dv != d
    out = attention(q, k, v, HEADS)
    assert out.shape == (2, 5, 2 * HEADS)
    assert torch.allclose(out.double(), ref_attention(q, k, v, HEADS), atol=1e-6)


@pytest.mark.parametrize("mode", ["inner", "outer"])
@pytest.mark.parametrize("fusion", [None, "self", "cross"])
def test_interpolated_attention_matches_the_closed_form(mode, fusion):
    # self-attention: every key set has Nq tokens; cross-attention: all conditions have one length
    n_tok = {None: 4, "self": 5, "cross": 4}[fusion]
    q, ka, va, kb, vb, ks, vs = _setup(nq=5, na=n_tok, nb=n_tok, ns=None if fusion is None else n_tok)
    t = torch.tensor([0.2, 0.5, 0.9])
    out = interpolated_attention(q, ka, va, kb, vb, t, HEADS, mode=mode, k_self=ks, v_self=vs)
    expected = ref_interpolation(q, ka, va, kb, vb, t, mode, ks, vs)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.allclose(out.double(), expected, atol=1e-6)


def test_inner_and_outer_differ_in_the_middle():
    q, ka, va, kb, vb, _, _ = _setup()
    inner = interpolated_attention(q, ka, va, kb, vb, 0.5, HEADS, mode="inner")
    outer = interpolated_attention(q, ka, va, kb, vb, 0.5, HEADS, mode="outer")
    assert (inner - outer).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["inner", "outer"])
@pytest.mark.parametrize("fused", [False, True])
def test_endpoints_reduce_to_attention_over_the_endpoint_keys(mode, fused):
    q, ka, va, kb, vb, ks, vs = _setup(ns=4 if fused else None)
    for t, k, v in ((0.0, ka, va), (1.0, kb, vb)):
        out = interpolated_attention(q, ka, va, kb, vb, t, HEADS, mode=mode, k_self=ks, v_self=vs)
        if fused:
            k, v = torch.cat([ks, k.expand(3, -1, -1)], 1), torch.cat([vs, v.expand(3, -1, -1)], 1)
        assert torch.allclose(out, attention(q, k, v, HEADS), atol=1e-6)


@pytest.mark.parametrize("mode", ["inner", "outer"])
def test_fused_endpoint_frames_equal_plain_attention(mode):
    # The frame IS the endpoint: its own keys equal the endpoint's, the fused key set is the
    # endpoint's set twice, and softmax attention over a duplicated set is unchanged.
    q, ka, va, kb, vb, _, _ = _setup(batch=1, nq=6, na=6, nb=6)
    plain_a, plain_b = attention(q, ka, va, HEADS), attention(q, kb, vb, HEADS)
    out_a = interpolated_attention(q, ka, va, kb, vb, 0.0, HEADS, mode=mode, k_self=ka, v_self=va)
    out_b = interpolated_attention(q, ka, va, kb, vb, 1.0, HEADS, mode=mode, k_self=kb, v_self=vb)
    assert (out_a - plain_a).abs().max() < 1e-6
    assert (out_b - plain_b).abs().max() < 1e-6
    # and in float64 reference arithmetic the identity is exact to rounding
    dup = ref_attention(q, torch.cat([ka, ka], 1), torch.cat([va, va], 1), HEADS)
    assert (dup - ref_attention(q, ka, va, HEADS)).abs().max() < 1e-12


def test_a_batch_with_the_endpoints_in_it_keeps_them_unchanged():
    # The AID batch [A, frames, B] with t = [0, ..., 1] and fusion: endpoint rows equal plain attention.
    x = _rand(4, 6, C)  # self-attention: keys/values from the hidden states of the same batch
    q, k, v = x, _rand(4, 6, C, seed=1), _rand(4, 6, C, seed=2)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    out = interpolated_attention(q, k[:1], v[:1], k[-1:], v[-1:], t, HEADS, k_self=k, v_self=v)
    plain = attention(q, k, v, HEADS)
    assert torch.allclose(out[0], plain[0], atol=1e-6) and torch.allclose(out[-1], plain[-1], atol=1e-6)
    assert (out[1] - plain[1]).abs().max() > 1e-3


@pytest.mark.parametrize("fused", [False, True])
def test_inner_equals_outer_at_the_endpoints(fused):
    q, ka, va, kb, vb, ks, vs = _setup(ns=5 if fused else None)
    t = torch.tensor([0.0, 1.0, 0.0])
    inner = interpolated_attention(q, ka, va, kb, vb, t, HEADS, k_self=ks, v_self=vs, mode="inner")
    outer = interpolated_attention(q, ka, va, kb, vb, t, HEADS, k_self=ks, v_self=vs, mode="outer")
    assert torch.allclose(inner, outer, atol=1e-6)


@pytest.mark.parametrize("mode", ["inner", "outer"])
def test_batched_coefficients_equal_per_frame_calls(mode):
    q, ka, va, kb, vb, ks, vs = _setup(batch=4, ns=5)
    t = torch.tensor([0.0, 0.25, 0.6, 1.0])
    batched = interpolated_attention(q, ka, va, kb, vb, t, HEADS, mode=mode, k_self=ks, v_self=vs)
    for i in range(4):
        single = interpolated_attention(q[i:i + 1], ka, va, kb, vb, float(t[i]), HEADS, mode=mode,
                                        k_self=ks[i:i + 1], v_self=vs[i:i + 1])
        assert torch.allclose(batched[i:i + 1], single, atol=1e-6)


def test_per_frame_endpoint_keys_and_scalar_coefficient_broadcast():
    q, ka, va, kb, vb, _, _ = _setup()
    rows = [t.expand(3, -1, -1).clone() for t in (ka, va, kb, vb)]
    shared = interpolated_attention(q, ka, va, kb, vb, 0.4, HEADS, mode="outer")
    assert torch.allclose(interpolated_attention(q, *rows, 0.4, HEADS, mode="outer"), shared, atol=1e-7)
    assert torch.allclose(interpolated_attention(q, ka, va, kb, vb, torch.tensor([0.4]), HEADS, mode="outer"), shared)
    assert torch.allclose(interpolated_attention(q, ka, va, kb, vb, [0.4, 0.4, 0.4], HEADS, mode="outer"), shared)


def test_frame_chunks():
    assert frame_chunks(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert frame_chunks(0, 3) == []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(StormError) as err:
            frame_chunks(4, bad)
        assert err.value.input_name == "chunk_size"


def test_host_kernel_can_be_plugged_in():
    q, ka, va, kb, vb, ks, vs = _setup(ns=4)
    q16 = q.half()
    calls = []

    def host_kernel(q, k, v, heads):
        calls.append((q.dtype, k.dtype, k.shape[0], heads))
        return ref_attention(q.float(), k.float(), v.float(), heads).to(q.dtype)

    for mode in ("inner", "outer"):
        ours = interpolated_attention(q16, ka.half(), va.half(), kb.half(), vb.half(), 0.3, HEADS, mode=mode,
                                      k_self=ks.half(), v_self=vs.half())
        theirs = interpolated_attention(q16, ka.half(), va.half(), kb.half(), vb.half(), 0.3, HEADS, mode=mode,
                                        k_self=ks.half(), v_self=vs.half(), attn_fn=host_kernel)
        assert theirs.dtype == torch.float16
        assert torch.allclose(ours.float(), theirs.float(), atol=5e-3)
    assert calls and all(c == (torch.float16, torch.float16, 3, HEADS) for c in calls)


# ------------------------------------------------------------------------------------------
# token lengths


def test_conditions_of_different_lengths_are_tiled_to_their_lcm():
    q, ka, va, kb, vb, _, _ = _setup(na=4, nb=8)
    tiled_a, tiled_b = match_token_lengths([ka, kb], ["k_a", "k_b"])
    assert tiled_a.shape[1] == tiled_b.shape[1] == 8 and torch.equal(tiled_a[:, 4:], ka) and tiled_b is kb
    va2 = torch.cat([va, va], 1)
    inner = interpolated_attention(q, ka, va, kb, vb, 0.3, HEADS, mode="inner")
    assert torch.allclose(inner, interpolated_attention(q, tiled_a, va2, kb, vb, 0.3, HEADS, mode="inner"), atol=1e-7)
    # tiling is invisible at the endpoint, and outer needs none
    assert torch.allclose(interpolated_attention(q, ka, va, kb, vb, 0.0, HEADS, mode="inner"), attention(q, ka, va, HEADS), atol=1e-6)
    outer = interpolated_attention(q, ka, va, kb, vb, 0.3, HEADS, mode="outer")
    assert torch.allclose(outer.double(), ref_interpolation(q, ka, va, kb, vb, [0.3] * 3, "outer"), atol=1e-6)
    # fused cross-attention with a frame condition of a third length (PAID guide prompt)
    ks, vs = _rand(3, 6, C, seed=9), _rand(3, 6, C, seed=10)
    fused = interpolated_attention(q, ka, va, kb, vb, 0.0, HEADS, k_self=ks, v_self=vs, mode="outer")
    ks24, ka24 = ks.repeat(1, 4, 1), ka.repeat(1, 6, 1)
    vs24, va24 = vs.repeat(1, 4, 1), va.repeat(1, 6, 1)
    expected = attention(q, torch.cat([ks24, ka24.expand(3, -1, -1)], 1), torch.cat([vs24, va24.expand(3, -1, -1)], 1),
                         HEADS)
    assert torch.allclose(fused, expected, atol=1e-6)


def test_too_different_token_lengths_name_the_input():
    q, ka, va, kb, vb, _, _ = _setup(na=4, nb=5)  # lcm 20 = 5x the shorter
    with pytest.raises(ShapeError) as err:
        interpolated_attention(q, ka, va, kb, vb, 0.5, HEADS, max_token_repeat=4, mode="inner")
    assert err.value.input_name == "k_b" and "token lengths" in str(err.value)
    interpolated_attention(q, ka, va, kb, vb, 0.5, HEADS, mode="inner")  # within the default limit


# ------------------------------------------------------------------------------------------
# validation, dtype, device, purity


def test_invalid_arguments_name_the_input():
    q, ka, va, kb, vb, ks, vs = _setup(ns=4)
    cases = [
        (dict(t=1.5), StormError, "t"),
        (dict(t=float("nan")), StormError, "t"),
        (dict(t=torch.tensor([0.1, 0.2])), ShapeError, "t"),
        (dict(mode="middle"), StormError, "mode"),
        (dict(k_self=ks), StormError, "v_self"),
        (dict(k_self=ks[:1], v_self=vs[:1]), ShapeError, "k_self"),
        (dict(heads=4), ShapeError, "q"),
        (dict(heads=0), StormError, "heads"),
        (dict(k_a=_rand(2, 4, C)), ShapeError, "k_a"),
        (dict(k_b=_rand(1, 4, C + 2)), ShapeError, "k_b"),
        (dict(v_b=_rand(1, 3, C)), ShapeError, "v_b"),
        (dict(q=q[0]), ShapeError, "q"),
    ]
    for override, exc, name in cases:
        args = dict(q=q, k_a=ka, v_a=va, k_b=kb, v_b=vb, t=0.5, heads=HEADS)
        args.update(override)
        with pytest.raises(exc) as err:
            interpolated_attention(**args)
        assert err.value.input_name == name, override


def test_coefficients_broadcast_and_validate():
    assert torch.equal(as_coefficients(0.25, 3), torch.full((3,), 0.25))
    assert torch.equal(as_coefficients([0, 0.5, 1], 3), torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(StormError):
        as_coefficients(-0.1, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_is_preserved(dtype):
    q, ka, va, kb, vb, ks, vs = (x.to(dtype) for x in _setup(ns=4))
    for mode in ("inner", "outer"):
        out = interpolated_attention(q, ka, va, kb, vb, [0.1, 0.5, 1.0], HEADS, mode=mode, k_self=ks, v_self=vs)
        assert out.dtype == dtype
        ref = ref_interpolation(q, ka, va, kb, vb, [0.1, 0.5, 1.0], mode, ks, vs)
        assert torch.allclose(out.double(), ref, atol=2e-2 if dtype != torch.float64 else 1e-6)
    assert attention(q, ka, va, HEADS).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_is_preserved_on_cuda():
    q, ka, va, kb, vb, ks, vs = (x.cuda().half() for x in _setup(ns=4))
    out = interpolated_attention(q, ka, va, kb, vb, torch.tensor([0.0, 0.5, 1.0]), HEADS, k_self=ks, v_self=vs)
    assert out.device == q.device and out.dtype == torch.float16
    cpu = interpolated_attention(*(x.cpu().float() for x in (q, ka, va, kb, vb)), [0.0, 0.5, 1.0], HEADS,
                                 k_self=ks.cpu().float(), v_self=vs.cpu().float())
    assert torch.allclose(out.cpu().float(), cpu, atol=5e-3)
    noise = slerp(torch.randn(1, 4, 8, 8, device="cuda"), torch.randn(1, 4, 8, 8, device="cuda"), [0.0, 0.5, 1.0])
    assert noise.device == q.device


def test_inputs_are_not_modified():
    tensors = _setup(ns=4)
    before = [x.clone() for x in tensors]
    t = torch.tensor([0.0, 0.4, 1.0])
    q, ka, va, kb, vb, ks, vs = tensors
    for mode in ("inner", "outer"):
        interpolated_attention(q, ka, va, kb, vb, t, HEADS, mode=mode, k_self=ks, v_self=vs)
    slerp(ka, kb, t)
    slerp(ka, kb, t, per="row")
    lerp(ka, kb, t)
    assert all(torch.equal(x, y) for x, y in zip(tensors, before, strict=True))
    assert torch.equal(t, torch.tensor([0.0, 0.4, 1.0]))


# ------------------------------------------------------------------------------------------
# Beta schedule and warm-up


def test_beta_schedule_matches_the_documented_example():
    t = beta_schedule(7, 3, 3)
    expected = torch.tensor([0, 0.3027, 0.4091, 0.5, 0.5909, 0.6973, 1])
    assert t.shape == (7,) and t.dtype == torch.float32
    assert torch.allclose(t, expected, atol=1e-4)


def test_beta_schedule_is_the_beta_quantile_function_with_exact_endpoints():
    stats = pytest.importorskip("scipy.stats")
    for n, a, b in [(5, 1, 1), (3, 6, 3), (9, 0.5, 2.0), (28, 28, 28)]:
        t = beta_schedule(n, a, b, dtype=torch.float64)
        q = stats.beta.ppf([i / (n - 1) for i in range(n)], a, b)
        assert torch.allclose(t[1:-1], torch.tensor(q[1:-1], dtype=torch.float64), atol=1e-10)
        assert t[0].item() == 0.0 and t[-1].item() == 1.0
        assert bool((t[1:] >= t[:-1]).all())
    assert torch.allclose(beta_schedule(5, 1, 1), torch.linspace(0, 1, 5), atol=1e-7)


def test_beta_schedule_validation_names_the_input():
    for args, name in [((1, 3, 3), "frames"), ((2.5, 3, 3), "frames"), ((7, 0, 3), "alpha"),
                       ((7, -1, 3), "alpha"), ((7, 3, 0), "beta"), ((7, 3, float("inf")), "beta")]:
        with pytest.raises(StormError) as err:
            beta_schedule(*args)
        assert err.value.input_name == name
        assert name in str(err.value)


def test_warmup_window():
    assert warmup_steps(50, 0.122) == 6  # the Gradio demo's setting
    assert [interpolation_active(i, 28, 0.5) for i in range(28)] == [True] * 14 + [False] * 14
    assert not any(interpolation_active(i, 10, 0.0) for i in range(10))
    assert all(interpolation_active(i, 10, 1.0) for i in range(10))
    assert not interpolation_active(10, 10, 1.0)


@pytest.mark.parametrize("args, name", [((0, 10, 1.5), "warmup_ratio"), ((0, 10, -0.1), "warmup_ratio"),
                                        ((0, 0, 0.5), "steps"), ((-1, 10, 0.5), "step")])
def test_warmup_validation_names_the_input(args, name):
    with pytest.raises(StormError) as err:
        interpolation_active(*args)
    assert err.value.input_name == name


# ------------------------------------------------------------------------------------------
# slerp / lerp


def _angle(x, y):
    """Angle between two tensors seen as vectors: atan2(|x| |y - proj_x y|, x . y), float64."""
    x, y = x.flatten().double(), y.flatten().double()
    return torch.atan2(x.norm() * (y - (x @ y) / (x @ x) * x).norm(), x @ y).item()


@pytest.mark.parametrize("per", ["frame", "row"])
def test_slerp_endpoints_are_exact_and_shapes_broadcast(per):
    a, b = _rand(1, 4, 3, 5), _rand(1, 4, 3, 5, seed=1)
    out = slerp(a, b, torch.tensor([0.0, 0.3, 1.0]), per=per)
    assert out.shape == (3, 4, 3, 5) and out.dtype == a.dtype
    assert torch.equal(out[0], a[0]) and torch.equal(out[2], b[0])
    assert slerp(a, b, 0.5, per=per).shape == (1, 4, 3, 5)


def test_slerp_keeps_unit_vectors_on_the_sphere_at_linear_angle():
    a = _rand(1, 16)
    b = _rand(1, 16, seed=1)
    a, b = a / a.norm(), b / b.norm()
    theta = _angle(a, b)
    t = torch.linspace(0, 1, 9)
    out = slerp(a, b, t)
    assert torch.allclose(out.norm(dim=1), torch.ones(9), atol=1e-6)
    for ti, x in zip(t.tolist(), out, strict=True):
        assert _angle(a, x) == pytest.approx(ti * theta, abs=1e-5)
        assert _angle(x, b) == pytest.approx((1 - ti) * theta, abs=1e-5)


def test_slerp_interpolates_the_norm_and_preserves_noise_statistics():
    a, b = 2 * _rand(1, 4, 16, 16), 3 * _rand(1, 4, 16, 16, seed=1)
    out = slerp(a, b, [0.25, 0.5])
    assert out[0].norm().item() == pytest.approx(0.75 * a.norm().item() + 0.25 * b.norm().item(), rel=1e-5)
    na, nb = _rand(1, 4, 32, 32), _rand(1, 4, 32, 32, seed=1)
    assert slerp(na, nb, 0.5).std().item() == pytest.approx(1.0, abs=0.05)
    assert lerp(na, nb, 0.5).std().item() == pytest.approx(math.sqrt(0.5), abs=0.05)  # why not lerp


def test_slerp_handles_parallel_antiparallel_and_zero_vectors():
    a = _rand(1, 8)
    t = torch.linspace(0, 1, 5)
    par = slerp(a, 3 * a, t)  # parallel: same direction, norm interpolated
    assert torch.isfinite(par).all()
    assert torch.allclose(par, (1 + 2 * t)[:, None] * a, atol=1e-5)
    anti = slerp(a, -a, t)  # antiparallel: a half turn through a fixed perpendicular direction
    assert torch.isfinite(anti).all()
    assert torch.allclose(anti.norm(dim=1), a.norm().expand(5), rtol=1e-5)
    for ti, x in zip(t.tolist(), anti, strict=True):
        assert _angle(a, x) == pytest.approx(ti * math.pi, abs=1e-4)
    assert torch.equal(slerp(a, -a, t), anti)  # deterministic
    zero = slerp(torch.zeros_like(a), a, t)
    assert torch.allclose(zero, t[:, None] * a, atol=1e-6)


def test_official_row_slerp_follows_the_per_row_formula():
    a, b = _rand(1, 2, 3, 8), _rand(1, 2, 3, 8, seed=1)
    t = 0.3
    out = slerp(a, b, t, per="row")
    an, bn = a.double() / a.double().norm(dim=-1, keepdim=True), b.double() / b.double().norm(dim=-1, keepdim=True)
    theta = torch.acos((an * bn).sum(-1, keepdim=True))
    expected = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    # rows of equal norm: the official formula is the whole-vector slerp applied row by row
    a_eq, b_eq = an.float(), bn.float()
    per_row = torch.stack([slerp(a_eq[0, i, j][None], b_eq[0, i, j][None], t)[0]
                           for i in range(2) for j in range(3)]).reshape(1, 2, 3, 8)
    assert torch.allclose(slerp(a_eq, b_eq, t, per="row"), per_row, atol=1e-5)
    # and it differs from the whole-tensor slerp
    assert (slerp(a, b, t) - out).abs().max() > 1e-3
    # near-parallel rows fall back to lerp as in the official code
    assert torch.allclose(slerp(a, 2 * a, t, per="row"), torch.lerp(a, 2 * a, t), atol=1e-6)


def test_slerp_dtype_and_validation():
    a, b = _rand(1, 4, 4, 4, dtype=torch.float16), _rand(1, 4, 4, 4, seed=1, dtype=torch.float16)
    out = slerp(a, b, [0.0, 0.5, 1.0])
    assert out.dtype == torch.float16 and torch.equal(out[0], a[0]) and torch.equal(out[2], b[0])
    with pytest.raises(StormError) as err:
        slerp(a, b, 0.5, per="global")
    assert err.value.input_name == "per"
    with pytest.raises(ShapeError):
        slerp(a, b[..., :2], 0.5)
    with pytest.raises(ShapeError):
        slerp(torch.zeros(2, 4), torch.zeros(2, 4), [0.1, 0.2, 0.3])
    with pytest.raises(StormError) as err:
        slerp(a, b, 2.0)
    assert err.value.input_name == "t"


def test_lerp_of_conditions_tiles_token_lengths_and_keeps_endpoints():
    c77, c154 = _rand(1, 7, 6), _rand(1, 14, 6, seed=1)  # stand-ins for 77 and 154 tokens
    out = lerp(c77, c154, torch.tensor([0.0, 0.5, 1.0]))
    assert out.shape == (3, 14, 6)
    assert torch.equal(out[0], c77[0].repeat(2, 1)) and torch.equal(out[2], c154[0])
    assert torch.allclose(out[1], 0.5 * (c77[0].repeat(2, 1) + c154[0]))
    pooled = lerp(_rand(1, 12), _rand(1, 12, seed=1), [0.25, 0.75])
    assert pooled.shape == (2, 12)
    with pytest.raises(ShapeError):
        lerp(_rand(1, 12), _rand(1, 10), 0.5)
