"""The guided sampler on the real hosts: exactness, the A&E effect, progress, interrupts, bad numbers."""

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import pytest
import torch

from harness.nodeutil import node_output, weakest_subject_attention

LAYERS = "1/32 res: down+up (A&E)"
THRESHOLDS = "0:0.05, 0.2:0.5, 0.4:0.8"


@pytest.fixture(scope="module")
def setup(nodes, tiny, encode):
    """``setup(arch)`` -> (model, tokens, positive, negative) for "a cat and a dog"."""
    cache = {}

    def get(arch):
        if arch not in cache:
            tm = tiny(arch)
            with torch.inference_mode():
                tokens, cond, _ = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text="a cat and a dog",
                                                                                 subjects="cat, dog"))
            cache[arch] = (tm.model, tokens, cond, encode(tm.clip, "blurry"))
        return cache[arch]

    return get


def ae(nodes, tokens, step_size=20.0, **kw):
    args = dict(start_at=0.0, end_at=0.5, thresholds=THRESHOLDS, max_refine_iters=5, smoothing=True, end_tokens="auto")
    args.update(kw)
    with torch.inference_mode():
        return nodes["STORM_AttendAndExcite"]().build(tokens=tokens, step_size=step_size, **args)[0]


def custom_sample(model, sampler, sigmas, pos, neg, latent, seed=3, callback=None):
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, noise, 7.5, sampler, sigmas, pos, neg, latent, callback=callback,
                                          disable_pbar=True, seed=seed)


def sigmas_for(model, steps, scheduler="normal", sampler="euler"):
    ks = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler, scheduler=scheduler,
                                 denoise=1.0, model_options=model.model_options)
    return ks.sigmas


def guided_sampler(nodes, guidance, name="euler"):
    with torch.inference_mode():
        return nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name=name, attention_layers=LAYERS)


class ConstantTerm:
    """A term whose loss does not depend on the maps: guided steps happen, gradients are zero."""

    @staticmethod
    def make(pack, value=1.0, window=(0.0, 0.5)):
        g = pack.storm_ops.guidance.terms

        class Constant(g.GuidanceTerm):
            name = "constant"

            def token_columns(self):
                return ()

            def compute(self, ctx):
                return g.TermResult(ctx.maps.sum((1, 2, 3)) * 0.0 + value)

        term = Constant(window=g.StepWindow(*window), step_size=g.StepSize(1.0, 1.0))
        return g.Guidance((term,))


SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "res_multistep", "ddim"]


@pytest.mark.parametrize("name", SAMPLERS)
def test_guidance_off_equals_the_host_sampler_bit_for_bit(nodes, setup, name):
    model, tokens, pos, neg = setup("sd15")
    latent = torch.zeros(1, 4, 16, 16)
    sigmas = sigmas_for(model, 4, sampler=name)
    ours, _ = guided_sampler(nodes, ae(nodes, tokens, step_size=0.0), name)
    host = comfy.samplers.sampler_object(name)
    assert torch.equal(custom_sample(model, ours, sigmas, pos, neg, latent),
                       custom_sample(model, host, sigmas, pos, neg, latent))


@pytest.mark.parametrize("arch,name", [("sd15", "euler_ancestral"), ("sdxl", "euler"), ("sdxl", "dpmpp_2m")])
def test_guided_ksampler_off_equals_core_ksampler(nodes, setup, arch, name):
    model, tokens, pos, neg = setup(arch)
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    with torch.inference_mode():
        out, _ = nodes["STORM_GuidedKSampler"]().sample(model=model, guidance=ae(nodes, tokens, step_size=0.0), seed=5,
                                                        steps=4, cfg=7.5, sampler_name=name, scheduler="karras",
                                                        positive=pos, negative=neg, latent_image=latent, denoise=1.0,
                                                        attention_layers=LAYERS)
        noise = comfy.sample.prepare_noise(latent["samples"], 5)
        ref = comfy.sample.sample(model, noise, 4, 7.5, name, "karras", pos, neg, latent["samples"], seed=5,
                                  disable_pbar=True)
    assert torch.equal(out["samples"], ref)


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "heun", "ddim"])
def test_single_step_samplers_stay_exact_when_segmented(pack, nodes, setup, name):
    """Guided steps with a zero gradient split the schedule into per-step calls: still the host's result."""
    model, _, pos, neg = setup("sd15")
    latent = torch.zeros(1, 4, 16, 16)
    sigmas = sigmas_for(model, 4)
    ours, history = guided_sampler(nodes, ConstantTerm.make(pack), name)
    got = custom_sample(model, ours, sigmas, pos, neg, latent)
    assert history.latest().info.guided_steps == [0, 1]
    assert torch.equal(got, custom_sample(model, comfy.samplers.sampler_object(name), sigmas, pos, neg, latent))


@pytest.mark.parametrize(("steps", "guided"), [(1, [0]), (5, [0, 1, 2]), (4, [0, 1])])
def test_short_schedules_guide_every_step_inside_the_window(pack, nodes, setup, steps, guided):
    """Step i of n is guided when i/n lies in [start_at, end_at): [0, 0.5) of 5 steps is 0, 1, 2 and a
    one-step schedule is guided at step 0 (round-half-to-even gave 0, 1 and no step at all)."""
    model, _, pos, neg = setup("sd15")
    sampler, history = guided_sampler(nodes, ConstantTerm.make(pack))
    custom_sample(model, sampler, sigmas_for(model, steps), pos, neg, torch.zeros(1, 4, 16, 16))
    assert history.latest().info.guided_steps == guided


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_guidance_raises_the_neglected_subjects_attention(pack, nodes, setup, arch):
    """Same seed and noise: the most neglected subject's smoothed max attention is higher with guidance."""
    model, tokens, pos, neg = setup(arch)
    latent = torch.zeros(1, 4, 32, 32)
    sigmas = sigmas_for(model, 10)
    for seed in (1, 2):
        runs = {}
        for label, size in (("off", 0.0), ("on", 20.0)):
            sampler, history = guided_sampler(nodes, ae(nodes, tokens, step_size=size))
            custom_sample(model, sampler, sigmas, pos, neg, latent, seed=seed)
            runs[label] = history.latest()
        window = range(5)  # end_at 0.5 of 10 steps
        off = weakest_subject_attention(pack, runs["off"], tokens)
        on = weakest_subject_attention(pack, runs["on"], tokens)
        assert sum(on[i] for i in window) / 5 > sum(off[i] for i in window) / 5 + 0.02, (seed, off, on)
        assert runs["on"].info.guided_steps == [0, 1, 2, 3, 4]
        assert runs["on"].info.weights_copied == 0  # every layer of the host's UNet is on the copy-free path
        refined = [e for e in runs["on"].log if e.refine_iters]
        for entry in refined:  # refinement lowers the A&E loss at its step
            assert entry.terms_after["attend_excite"][0] < entry.terms_before["attend_excite"][0]


def test_weights_the_host_casts_per_layer_are_not_kept_for_backward(nodes, encode):
    """bf16 weights on the CPU: the host casts every weight to float32 per call ("manual cast", as for fp8
    weights or low-VRAM offloading on a GPU). The gradient pass casts them again in backward instead of
    keeping a float32 copy of every layer, and guidance still lowers the loss."""
    from harness.tiny_models import build_tiny

    with torch.inference_mode():
        tm = build_tiny("sd15", dtype=torch.bfloat16)
        tokens, pos, _ = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text="a cat and a dog",
                                                                        subjects="cat, dog"))
    neg = encode(tm.clip, "")
    assert tm.model.model.manual_cast_dtype == torch.float32  # the premise: the host casts every weight
    sampler, history = guided_sampler(nodes, ae(nodes, tokens, thresholds="0:0.999", max_refine_iters=2))
    custom_sample(tm.model, sampler, sigmas_for(tm.model, 4), pos, neg, torch.zeros(1, 4, 16, 16))
    record = history.latest()
    assert record.info.weights_copied == 0
    assert record.info.weights_recast > 0
    first = record.log[0]
    assert first.refine_iters == 2
    assert first.terms_after["attend_excite"][0] < first.terms_before["attend_excite"][0]


def _running_out_of_memory(pack, model, fail_passes):
    """``model`` whose gradient passes number ``fail_passes`` (counted from 1) raise the out-of-memory error
    a GPU raises, before the UNet runs; returns it and the list of every pass's number."""
    passes = []

    def wrapper(apply_model, args):
        if args["c"].get("transformer_options", {}).get(pack.nodes.attention_capture.GRAD_PASS_FLAG):
            passes.append(len(passes) + 1)
            if passes[-1] in fail_passes:
                raise pack.nodes.compat.OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 2.00 GiB")
        return apply_model(args["input"], args["timestep"], **args["c"])

    failing = model.clone()
    failing.set_model_unet_function_wrapper(wrapper)
    return failing, passes


def test_a_gradient_pass_out_of_memory_keeps_its_activations_on_the_cpu_and_the_run_goes_on(pack, nodes, setup, caplog):
    model, tokens, pos, neg = setup("sd15")
    sigmas, latent = sigmas_for(model, 4), torch.zeros(1, 4, 16, 16)
    guidance = ae(nodes, tokens, thresholds="0:0.999", max_refine_iters=2)
    sampler, history = guided_sampler(nodes, guidance)
    expected = custom_sample(model, sampler, sigmas, pos, neg, latent)
    assert history.latest().info.activations_offloaded is False
    failing, passes = _running_out_of_memory(pack, model, fail_passes={2})  # the first refinement iteration
    sampler, history = guided_sampler(nodes, guidance)
    with caplog.at_level("WARNING", logger="comfyui-storm"):
        got = custom_sample(failing, sampler, sigmas, pos, neg, latent)
    assert history.latest().info.activations_offloaded is True
    assert "out of GPU memory in the gradient pass at step 0" in caplog.text
    assert len(passes) == 1 + 2 + 1 + 1  # step 0: pass, failed pass and its retry, one more; step 1: one pass
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the same gradients from CPU-held activations


def test_a_gradient_pass_out_of_memory_twice_is_a_clear_error(pack, nodes, setup):
    model, tokens, pos, neg = setup("sd15")
    failing, passes = _running_out_of_memory(pack, model, fail_passes={1, 2})
    sampler, _ = guided_sampler(nodes, ae(nodes, tokens))
    with pytest.raises(Exception, match="out of GPU memory in the gradient pass of attention guidance") as info:
        custom_sample(failing, sampler, sigmas_for(model, 4), pos, neg, torch.zeros(1, 4, 16, 16))
    assert "STORM Guided Sampler" in str(info.value) and "--lowvram" in str(info.value)
    assert getattr(info.value, "input_name", None) == "attention_layers"
    assert passes == [1, 2]


def test_progress_callback_is_called_once_per_step_in_order(nodes, setup):
    model, tokens, pos, neg = setup("sd15")
    seen = []
    sampler, _ = guided_sampler(nodes, ae(nodes, tokens, max_refine_iters=2))
    custom_sample(model, sampler, sigmas_for(model, 6), pos, neg, torch.zeros(1, 4, 16, 16),
                  callback=lambda step, x0, x, total: seen.append((step, total)))
    assert seen == [(i, 6) for i in range(6)]


def _expect_interrupt(pack, run):
    """``run()`` must end in the host's interrupt; the interrupt flag is cleared whatever happens."""
    try:
        with pytest.raises(pack.nodes.compat.interrupt_exception_types()):
            run()
    finally:
        comfy.model_management.interrupt_current_processing(False)


def test_interrupt_stops_within_one_unet_pass(pack, nodes, setup):
    model, tokens, pos, neg = setup("sd15")
    calls = []
    stop_at = 4  # lands inside the guided window (gradient passes and refinement)

    def counting_wrapper(apply_model, args):
        calls.append(1)
        if len(calls) == stop_at:
            comfy.model_management.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted = model.clone()
    counted.set_model_unet_function_wrapper(counting_wrapper)
    sampler, _ = guided_sampler(nodes, ae(nodes, tokens))
    _expect_interrupt(pack, lambda: custom_sample(counted, sampler, sigmas_for(model, 10), pos, neg,
                                                  torch.zeros(1, 4, 16, 16)))
    assert len(calls) == stop_at  # no UNet pass started after the interrupt


def test_progress_moves_during_refinement(nodes, setup, monkeypatch):
    model, tokens, pos, neg = setup("sd15")
    shown = []
    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute",
                        lambda self, value, total=None, *a, **k: shown.append((value, total)))
    # a threshold no random model meets: every refinement iteration up to the cap runs at step 0
    sampler, history = guided_sampler(nodes, ae(nodes, tokens, thresholds="0:0.999", max_refine_iters=3))
    custom_sample(model, sampler, sigmas_for(model, 6), pos, neg, torch.zeros(1, 4, 16, 16))
    assert history.latest().log[0].refine_iters == 3
    assert shown == [(1, 3), (2, 3), (3, 3)]


def test_a_threshold_never_reached_is_reported_with_the_remedy(pack, nodes, setup, caplog):
    """Refinement that never reaches its threshold runs every loop to its cap, which spoiled the shape model's
    images (README, "Proof on images"): the run says so, in the console and in the heatmap's log, with the
    remedy; a reachable threshold and refinement turned off say nothing."""
    model, tokens, pos, neg = setup("sd15")
    format_log = pack.nodes.heatmap_render.format_log
    said = {}
    for label, kw in (("unreachable", dict(thresholds="0:0.999, 0.3:0.999", max_refine_iters=2)),
                      ("reached", dict(thresholds="0:0.0", max_refine_iters=2)),
                      ("once", dict(thresholds="0:0.0, 0.3:0.999", max_refine_iters=2)),
                      ("off", dict(thresholds="0:0.999", max_refine_iters=0))):
        caplog.clear()
        sampler, history = guided_sampler(nodes, ae(nodes, tokens, **kw))
        with caplog.at_level("WARNING", logger="comfyui-storm"):
            custom_sample(model, sampler, sigmas_for(model, 6), pos, neg, torch.zeros(2, 4, 16, 16))
        said[label] = ([r.getMessage() for r in caplog.records if "threshold" in r.getMessage()],
                       format_log(history.latest().log))
    warnings, text = said["unreachable"]
    assert len(warnings) == 1, warnings
    assert "never reached the threshold of sample(s) [0, 1] at any of its 2 step(s)" in warnings[0]
    assert "lower max_refine_iters" in warnings[0] and warnings[0].startswith("STORM Guided Sampler")
    assert text.count("refined x2 -> ") == 2 and text.count("(threshold not reached by sample(s) [0, 1])") == 2
    assert "The refinement never reached the threshold" in text
    for label in ("reached", "off"):
        assert said[label][0] == [] and "threshold not reached" not in said[label][1], label
    # reached at step 0, not at step 2: that step's line says so, the run gives no warning
    assert said["once"][0] == [] and said["once"][1].count("threshold not reached") == 1
    assert "never reached" not in said["once"][1]


def test_cancel_stops_a_gradient_pass_at_the_next_layer(pack, nodes, setup):
    model, tokens, pos, neg = setup("sd15")
    layer_calls = []

    def flag_at_first_gradient_layer(q, k, v, extra_options):
        layer_calls.append(bool(extra_options.get(pack.nodes.attention_capture.GRAD_PASS_FLAG)))
        if layer_calls[-1] and layer_calls.count(True) == 1:
            comfy.model_management.interrupt_current_processing(True)
        return pack.nodes.compat.host_attention(q, k, v, extra_options["n_heads"], extra_options)

    counted = model.clone()
    for key in (("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)):
        counted.set_model_attn2_replace(flag_at_first_gradient_layer, *key)
    sampler, _ = guided_sampler(nodes, ae(nodes, tokens))
    _expect_interrupt(pack, lambda: custom_sample(counted, sampler, sigmas_for(model, 10), pos, neg,
                                                  torch.zeros(1, 4, 16, 16)))
    # Cancel pressed during the first layer of the first gradient pass: the pass stopped at the next
    # layer instead of running its remaining four (and their backward)
    assert layer_calls == [True], layer_calls


def test_non_finite_loss_skips_the_update_and_is_reported(pack, nodes, setup):
    model, _, pos, neg = setup("sd15")
    latent = torch.zeros(1, 4, 16, 16)
    sigmas = sigmas_for(model, 6)
    sampler, history = guided_sampler(nodes, ConstantTerm.make(pack, value=float("nan"), window=(0.0, 0.3)))
    out = custom_sample(model, sampler, sigmas, pos, neg, latent)
    log = history.latest().log
    assert [e.step for e in log] == [0, 1]
    assert all(e.skipped and "non-finite loss" in e.skipped[0] for e in log)
    reference = custom_sample(model, comfy.samplers.sampler_object("euler"), sigmas, pos, neg, latent)
    assert torch.isfinite(out).all() and torch.equal(out, reference)  # the latent was never touched


def test_batches_are_guided_per_image(nodes, setup):
    model, tokens, pos, neg = setup("sd15")
    sampler, history = guided_sampler(nodes, ae(nodes, tokens, max_refine_iters=3))
    out = custom_sample(model, sampler, sigmas_for(model, 4), pos, neg, torch.zeros(2, 4, 16, 16))
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    entry = history.latest().log[0]
    assert len(entry.terms_before["attend_excite"]) == 2
    assert len(entry.metrics["attend_excite.max_attention"]) == 4  # 2 images x 2 subjects


@pytest.mark.parametrize("arch,hw,maps", [("sd15", (36, 44), (9, 11)), ("sdxl", (25, 19), (7, 5))])
def test_latent_sizes_that_are_not_multiples_of_8(nodes, setup, arch, hw, maps):
    model, tokens, pos, neg = setup(arch)
    sampler, history = guided_sampler(nodes, ae(nodes, tokens, max_refine_iters=1))
    out = custom_sample(model, sampler, sigmas_for(model, 4), pos, neg, torch.zeros(1, 4, *hw))
    assert out.shape == (1, 4, *hw) and torch.isfinite(out).all()
    record = history.latest()
    assert tuple(record.mean_maps(77).shape[-2:]) == maps
    assert record.log and record.log[0].terms_before["attend_excite"][0] <= 1.0


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_gradient_pass_through_inference_weights_equals_one_through_normal_copies(pack, arch):
    """The gradient pass differentiates through the host's inference-tensor weights without copying them;
    the latent's gradient equals the one through normal copies of every weight (what the pack did before)."""
    from harness.tiny_models import build_tiny

    with torch.inference_mode():  # a private model whose norm layers have non-trivial scales and shifts
        tm = build_tiny(arch, seed=7)
        norms = [m for m in tm.model.model.diffusion_model.modules() if isinstance(m, (torch.nn.GroupNorm,
                                                                                      torch.nn.LayerNorm))]
        for i, m in enumerate(norms):
            m.weight.mul_(torch.linspace(0.5, 1.5, m.weight.numel()).roll(i))
            m.bias.add_(torch.linspace(-0.2, 0.2, m.bias.numel()))
    unet = tm.model.model.diffusion_model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=gen)
    context = torch.randn(1, 77, tm.model.model.model_config.unet_config["context_dim"], generator=gen)
    extra = {}
    if tm.model.model.model_config.unet_config.get("adm_in_channels"):
        extra["y"] = torch.randn(1, tm.model.model.model_config.unet_config["adm_in_channels"], generator=gen)
    t = torch.tensor([500.0])

    def gradient():
        xg = x.clone().requires_grad_(True)
        out = unet(xg, t, context=context, **extra)
        return torch.autograd.grad(out.square().mean(), xg)[0]

    with pack.nodes.gradient_pass.gradient_pass() as mode:
        got = gradient()
    assert mode.copied == 0 and mode.fast > 100
    swapped = []
    with torch.inference_mode(False), torch.enable_grad(), torch.autograd.graph.allow_mutation_on_saved_tensors():
        try:
            for m in unet.modules():
                for name, p in list(m._parameters.items()):
                    if p is not None and p.is_inference():
                        m._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                        swapped.append((m, name, p))
            expected = gradient()
        finally:
            for m, name, p in swapped:
                m._parameters[name] = p
    assert swapped and all(p.is_inference() for _, _, p in swapped)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
