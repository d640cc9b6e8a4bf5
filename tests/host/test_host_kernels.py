"""The host's forward-only kernels and weight layouts meet the pack's gradient pass.

ComfyUI 0.33 routes Flux's RoPE (and other fused operations) through comfy-kitchen's custom operators,
which have no backward; users start ComfyUI with attention kernels that have none (SageAttention,
FlashAttention's custom operator, comfy-kitchen's int8 attention); quantized checkpoints keep weights in
comfy-kitchen layouts that the host runs through quantized matmuls. Guidance must differentiate through
all of them inside its own gradient pass, and leave the host's fast paths alone everywhere else.
"""

import importlib.util

import comfy.ldm.modules.attention as comfy_attention
import pytest
import torch

from harness.nodeutil import call_node
from harness.quantized import cpu_formats, load_quantized
from harness.tiny_dit import build_tiny_dit
from harness.tiny_models import tiny_conditioning

#: comfy-kitchen ships with ComfyUI 0.33 and later (0.3.64 has no fused kernels to test)
KITCHEN = importlib.util.find_spec("comfy_kitchen") is not None
needs_kitchen = pytest.mark.skipif(not KITCHEN, reason="this ComfyUI has no comfy-kitchen kernels (0.3.64)")
DIT_LATENT = (1, 16, 8, 8)


@pytest.fixture(scope="module")
def flux():
    with torch.inference_mode():
        return build_tiny_dit("flux")


def _prompt(nodes, clip):
    with torch.inference_mode():
        tokens, positive, _ = call_node(nodes["STORM_SubjectTokens"], clip=clip, text="a cat and a dog",
                                        subjects="cat, dog")
        return tokens, positive, tiny_conditioning(clip, "")


def _guided(nodes, model, tokens, positive, negative, latent, *, step_size=40.0, steps=3, cfg=1.0,
            scheduler="simple"):
    """A Guided KSampler run with Attend-and-Excite on its first steps; returns (samples, record)."""
    with torch.inference_mode():
        (guidance,) = call_node(nodes["STORM_AttendAndExcite"], tokens=tokens, step_size=step_size, end_at=0.5,
                                max_refine_iters=0)
        out, attention = call_node(nodes["STORM_GuidedKSampler"], model=model, guidance=guidance, seed=4, steps=steps,
                                   cfg=cfg, scheduler=scheduler, positive=positive, negative=negative,
                                   latent_image={"samples": torch.zeros(latent)})
    return out["samples"], attention.latest()


# ------------------------------------------------------------------------------------------ RoPE


@needs_kitchen
def test_flux_rope_uses_the_kitchen_kernel_when_sampling_and_a_differentiable_one_when_guiding(flux, nodes,
                                                                                                monkeypatch):
    """Every ordinary pass runs comfy-kitchen's RoPE (the host's fast path); the gradient passes run none: the
    host's training switch gives them its own differentiable RoPE. The switch is off again afterwards."""
    import comfy.quant_ops

    calls = {True: 0, False: 0}
    kernel = comfy.quant_ops.ck.apply_rope

    def counting(*args, **kwargs):
        calls[torch.is_grad_enabled()] += 1
        return kernel(*args, **kwargs)

    monkeypatch.setattr(comfy.quant_ops.ck, "apply_rope", counting)
    tokens, positive, negative = _prompt(nodes, flux.clip)
    _, record = _guided(nodes, flux.model, tokens, positive, negative, DIT_LATENT)
    assert [e.updates for e in record.log] == [1, 1]  # two guided steps, each applied its update
    assert calls[False] >= 3 * 4 and calls[True] == 0, calls  # 4 joint blocks per pass, 3 steps
    assert comfy.model_management.in_training is False


@needs_kitchen
def test_a_kitchen_operator_reached_with_a_gradient_runs_its_eager_reference(pack):
    """A comfy-kitchen operator the host does not switch off (Cosmos' fused RMS-norm + RoPE, JoyImage's) gets the
    library's differentiable reference inside the gradient pass: the same gradient as the host's pure-torch RoPE.
    Outside the pass its backward fails, which is what guidance met on ComfyUI 0.33."""
    import comfy.ldm.flux.math as flux_math
    import comfy_kitchen

    kernels = pack.nodes.gradient_pass
    gen = torch.Generator().manual_seed(0)
    q0, k0 = torch.randn(1, 2, 6, 8, generator=gen), torch.randn(1, 2, 6, 8, generator=gen)
    pe = flux_math.rope(torch.arange(6.0).reshape(1, 6), 8, 10000).unsqueeze(1)  # Flux's layout: (B, 1, L, 4, 2, 2)

    q = q0.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        comfy_kitchen.apply_rope(q, k0, pe)[0].square().sum().backward()

    q = q0.clone().requires_grad_(True)
    with kernels.KitchenBackward() as mode:
        (comfy_kitchen.apply_rope(q, k0, pe)[0].square().sum()).backward()
    assert mode.rerouted == {"apply_rope": 1}
    reference = q0.clone().requires_grad_(True)
    flux_math._apply_rope1(reference, pe).square().sum().backward()
    torch.testing.assert_close(q.grad, reference.grad)


@needs_kitchen
def test_a_kitchen_operator_without_a_reference_is_named(pack):
    import comfy_kitchen  # noqa: F401 - registers the operators

    kernels = pack.nodes.gradient_pass
    q = torch.randn(1, 4, 8, requires_grad=True)
    with pytest.raises(kernels.KernelWithoutBackward, match="'int8_attention' kernel on the guidance's gradient path"), \
            kernels.KitchenBackward():
        torch.ops.comfy_kitchen.int8_attention(q, q, q, 1)


# ---------------------------------------------------------------------------------------- attention


def _no_backward_attention(calls):
    """An attention kernel like SageAttention: right values, no autograd graph (counts its calls)."""
    basic = getattr(comfy_attention.attention_basic, "__wrapped__", comfy_attention.attention_basic)

    def storm_test_no_backward(q, k, v, heads, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        with torch.no_grad():
            return basic(q, k, v, heads, *args, **kwargs)

    return storm_test_no_backward


def test_an_attention_kernel_without_backward_is_replaced_in_the_gradient_pass_only(nodes, tiny):
    """The host's own attention-backend switch puts a kernel without backward on every attention call. Ordinary
    passes keep it; the gradient pass computes its attention with a differentiable kernel, so the guided run
    equals the one on the unpatched model (the kernels agree to float precision)."""
    tm = tiny("sd15")
    tokens, positive, negative = _prompt(nodes, tm.clip)
    calls: list[bool] = []
    patched = tm.model.clone()
    kernel = _no_backward_attention(calls)
    if hasattr(patched, "set_model_optimized_attention"):  # the host's attention-backend switch (0.33)
        patched.set_model_optimized_attention(kernel)
    else:  # 0.3.64 has the override but not the setter: what the setter does
        patched.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = \
            lambda _func, *args, **kwargs: kernel(*args, **kwargs)
    latent = (1, 4, 32, 32)
    kw = dict(step_size=20.0, steps=4, cfg=5.0, scheduler="normal")
    reference, _ = _guided(nodes, tm.model, tokens, positive, negative, latent, **kw)
    unguided, _ = _guided(nodes, tm.model, tokens, positive, negative, latent, **{**kw, "step_size": 0.0})
    samples, record = _guided(nodes, patched, tokens, positive, negative, latent, **kw)
    assert calls.count(False) > 0  # the ordinary passes ran the model's own kernel
    assert record.info.weights_copied == 0
    assert (reference - unguided).abs().max() > 1e-2  # guidance moved this run
    # float noise of the two kernels is ~1e-3 here (the latent's std is ~85); without the replacement the run is
    # ~40 away: the attention outputs carried no gradient
    torch.testing.assert_close(samples, reference, rtol=1e-3, atol=1e-2)


def test_the_kernels_autograd_can_differentiate_are_known(pack):
    kernels = pack.nodes.gradient_pass
    for name in ("attention_basic", "attention_sub_quad", "attention_split", "attention_pytorch"):
        assert kernels.differentiable(getattr(comfy_attention, name)), name
    for name in ("attention_sage", "attention3_sage", "attention_flash", "attention_comfy_kitchen_int8"):
        if hasattr(comfy_attention, name):
            assert not kernels.differentiable(getattr(comfy_attention, name)), name


@pytest.mark.skipif(not hasattr(comfy_attention, "AttentionTensorContainer"),
                    reason="this ComfyUI passes q/k/v as tensors only (0.3.64)")
def test_the_override_receives_tensors_when_the_model_passes_containers(pack):
    """ComfyUI 0.33 lets models hand q, k, v to the kernels in single-use containers; an override without a
    ``container_function`` (the pack's) receives plain tensors and its kernel runs as before."""
    seen = []

    def storm_test_override(func, *args, **kwargs):
        seen.append(tuple(type(a) for a in args[:3]))
        return func(*args, **kwargs)

    q = torch.randn(1, 6, 16)
    wrap = comfy_attention.AttentionTensorContainer
    options = {"optimized_attention_override": storm_test_override}
    out = comfy_attention.attention_basic(wrap(q), wrap(q.clone()), wrap(q.clone()), 2, transformer_options=options)
    assert seen == [(torch.Tensor,) * 3]
    torch.testing.assert_close(out, comfy_attention.attention_basic(q, q, q, 2))


def test_a_comfyui_without_attention_options_is_refused_when_the_pack_loads(pack, monkeypatch):
    monkeypatch.delattr(comfy_attention, "wrap_attn")
    assert "needs ComfyUI 0.3.59 or newer" in pack.nodes.compat.host_supported()


# ----------------------------------------------------------------------------------- quantized weights

#: (format, native): native = as on a GPU that computes the format (fp8 on Ada/Hopper, int8), the host's
#: quantized-input path; the CPU runs nvfp4 and mxfp8 only emulated (their native layouts need a GPU)
QUANTIZED = [(fmt, False) for fmt in cpu_formats()] + [(fmt, True) for fmt in cpu_formats()
                                                         if fmt.startswith(("float8", "int8"))]


INT8 = [(fmt, native) for fmt, native in QUANTIZED if fmt.startswith("int8")]


@pytest.mark.parametrize(("fmt", "native"), INT8, ids=[f"{f}-{'native' if n else 'emulated'}" for f, n in INT8])
def test_the_gradient_pass_computes_the_network_the_int8_weights_hold(nodes, flux, fmt, native):
    """The first guided step's loss, computed in the gradient pass with dequantized weights, is the float model's within
    int8's rounding (measured: 0.1% plain, 0.1% ConvRot): ConvRot's rotated rows (Krea 2 Turbo's file format) are
    rotated back. Read as plain int8 weights they give another network (measured: 31% off)."""
    tokens, positive, negative = _prompt(nodes, flux.clip)
    _, reference = _guided(nodes, flux.model, tokens, positive, negative, DIT_LATENT)
    with torch.inference_mode():
        model, count = load_quantized(flux.model, fmt, native=native)
    _, record = _guided(nodes, model, tokens, positive, negative, DIT_LATENT)
    assert count > 10
    expected, got = reference.log[0].loss_before[0], record.log[0].loss_before[0]
    assert got == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize(("fmt", "native"), QUANTIZED, ids=[f"{f}-{'native' if n else 'emulated'}" for f, n in QUANTIZED])
@pytest.mark.parametrize("arch", ["sd15", "flux"])
def test_guidance_runs_on_quantized_weights(nodes, tiny, flux, arch, fmt, native):
    """A checkpoint whose layers the host keeps quantized: guidance takes its gradient (through dequantized
    weights, in the gradient pass only) and moves the run; no weight is copied."""
    base = tiny("sd15") if arch == "sd15" else flux
    with torch.inference_mode():
        model, count = load_quantized(base.model, fmt, native=native)
    assert count > 10
    tokens, positive, negative = _prompt(nodes, base.clip)
    latent, kw = ((1, 4, 32, 32), dict(step_size=20.0, cfg=5.0, scheduler="normal")) if arch == "sd15" \
        else (DIT_LATENT, {})
    guided, record = _guided(nodes, model, tokens, positive, negative, latent, **kw)
    unguided, _ = _guided(nodes, model, tokens, positive, negative, latent, **{**kw, "step_size": 0.0})
    assert all(e.updates == 1 for e in record.log) and len(record.log) == 2
    assert torch.isfinite(guided).all() and (guided - unguided).abs().max() > 1e-3
    assert record.info.weights_copied == 0
