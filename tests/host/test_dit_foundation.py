"""The facts DiT attention capture rests on, checked on tiny SD3 and Flux models.

* the host's sampler runs the tiny DiTs (16 latent channels, patch 2);
* ``transformer_options["optimized_attention_override"]`` sees every joint attention call, with the
  text rows first (``[context, x]`` in MMDiT, ``[txt, img]`` in Flux), and an override that calls the
  host's kernel unchanged leaves the sample bit for bit as it was;
* the image-to-text probabilities taken from those calls have one row per image patch.
"""

import comfy.sample
import pytest
import torch

from harness.tiny_dit import DIT_ARCHS, build_tiny_dit, dit_conditioning

TEXT_ROWS = 12
LATENT = (1, 16, 8, 8)  # 64 px: 4 x 4 patches of 2 x 2


@pytest.fixture(scope="module", params=DIT_ARCHS)
def dit(request):
    with torch.inference_mode():
        return build_tiny_dit(request.param)


def _sample(model, positive, negative, steps=2):
    latent = torch.zeros(LATENT)
    noise = comfy.sample.prepare_noise(latent, 1)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, 3.0, "euler", "simple", positive, negative, latent, seed=1,
                                   disable_pbar=True)


def _heads_first(arch, q, heads):
    """q or k as ``(B, H, L, D)`` whatever layout the family's call uses."""
    if arch in ("flux", "chroma"):  # (B, H, L, D), skip_reshape=True
        return q
    b, n, _ = q.shape
    return q.reshape(b, n, heads, -1).transpose(1, 2)


def _capturing(dit, calls):
    def storm_capture(func, *args, **kwargs):
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        calls.append((_heads_first(dit.arch, q, heads).detach().clone(), _heads_first(dit.arch, k, heads).detach().clone()))
        return func(*args, **kwargs)

    model = dit.model.clone()
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = storm_capture
    return model


def test_the_host_samples_the_tiny_dit_and_an_attention_override_sees_every_joint_call(dit):
    pos, neg = dit_conditioning(dit, TEXT_ROWS, seed=1), dit_conditioning(dit, TEXT_ROWS, seed=2)
    plain = _sample(dit.model, pos, neg)
    assert plain.shape == LATENT and torch.isfinite(plain).all()
    calls = []
    captured = _sample(_capturing(dit, calls), pos, neg)
    assert torch.equal(captured, plain)  # the override calls the host's kernel as it was called
    image_rows = (LATENT[2] // 2) * (LATENT[3] // 2)
    blocks = 4 if dit.arch == "sd3" else 2 + 2  # SD3: 4 joint blocks; Flux and Chroma: 2 double + 2 single
    assert len(calls) == 2 * blocks  # 2 steps, cond and uncond in one batch
    for q, k in calls:
        assert q.shape[2] == k.shape[2] == TEXT_ROWS + image_rows
        probs = torch.softmax(q[..., TEXT_ROWS:, :].float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5, -1)
        to_text = probs[..., :TEXT_ROWS]  # (B, H, image rows, text rows)
        assert to_text.shape[-2:] == (image_rows, TEXT_ROWS)
        mass = to_text.sum(-1)  # the share of each image row's joint attention that goes to the text
        assert bool((mass <= 1 + 1e-6).all()) and bool((mass > 0).all())


def test_text_rows_come_first_in_the_joint_attention(dit):
    """Changing only the prompt rows changes the first ``TEXT_ROWS`` queries of the first joint block and
    leaves the image queries alone (they depend on the latent, time and pooled vector only)."""
    pos = dit_conditioning(dit, TEXT_ROWS, seed=1)
    other = [[torch.randn(pos[0][0].shape, generator=torch.Generator().manual_seed(9)), dict(pos[0][1])]]
    first = {}
    for label, cond in (("a", pos), ("b", other)):
        calls = []
        _sample(_capturing(dit, calls), cond, cond, steps=1)
        first[label] = calls[0][0]
    assert not torch.equal(first["a"][..., :TEXT_ROWS, :], first["b"][..., :TEXT_ROWS, :])
    assert torch.equal(first["a"][..., TEXT_ROWS:, :], first["b"][..., TEXT_ROWS:, :])


def test_the_hosts_text_encoders_condition_the_tiny_dit(dit):
    """The host's CLIPTextEncode path on the thin encoders: SD3 gives 77 CLIP rows padded to 4096 features
    and the L+G pooled vector; Flux 256 T5 rows (min length) and the CLIP-L pooled vector; Chroma the T5 rows
    of the prompt alone (no padding, no pooled vector). T5 has no start token, ends the prompt with ``</s>``
    (1) and pads with 0 (what Subject Tokens will have to place)."""
    from harness.tiny_models import tiny_conditioning

    text = "a red circle and a blue square"
    with torch.inference_mode():
        cond = tiny_conditioning(dit.clip, text)
        # Chroma: the prompt's 10 pieces "▁ a ▁red ▁circle ▁and ▁ a ▁blue ▁square </s>"
        rows = {"sd3": 77, "flux": 256, "chroma": 10}[dit.arch]
        assert cond[0][0].shape == (1, rows, dit.context_dim)
        if dit.pooled_dim:
            assert cond[0][1]["pooled_output"].shape == (1, dit.pooled_dim)
        else:
            assert cond[0][1].get("pooled_output") is None
        streams = dit.clip.tokenizer.tokenize_with_weights(text, return_word_ids=True)
    if "t5xxl" in streams:
        ids = [t for t, _, _ in streams["t5xxl"][0]]
        end = ids.index(1)
        # the T5 tokenizer's minimum length: 77 for SD3 (tokenised even with T5 off), 256 for Flux, none for Chroma
        assert len(ids) == {"sd3": 77, "flux": 256, "chroma": rows}[dit.arch]
        assert 0 < end < 20 and set(ids[end + 1:]) <= {0} and 1 not in ids[:end]
    negative = tiny_conditioning(dit.clip, "")
    if dit.arch == "flux":
        for c in (cond, negative):
            c[0][1]["guidance"] = 3.5
    out = _sample(dit.model, cond, negative)
    assert torch.isfinite(out).all()


def test_a_gradient_reaches_the_latent_through_the_stock_blocks(dit, pack):
    """Guidance needs d(loss)/d(latent) through the host's blocks. Inside the pack's gradient pass (frozen
    weights, mutation of saved tensors allowed) both families give a finite, non-zero latent gradient."""
    with torch.inference_mode():
        cond = dit_conditioning(dit, TEXT_ROWS, seed=1)
    base = dit.model.model
    extra = {"y": cond[0][1]["pooled_output"]} if dit.pooled_dim else {}
    if dit.arch in ("flux", "chroma"):  # Flux's distilled guidance; Chroma's network takes it too (0 by default)
        extra["guidance"] = torch.tensor([3.5 if dit.arch == "flux" else 0.0])
    def loss(x):  # of the network's own prediction: apply_model returns x - sigma * prediction (flow)
        denoised = base.apply_model(x, torch.tensor([0.8]), c_crossattn=cond[0][0], **extra)
        return (denoised - x).double().square().mean()

    x0 = torch.randn(LATENT, generator=torch.Generator().manual_seed(0))
    with pack.nodes.gradient_pass.gradient_pass() as frozen:
        x = x0.clone().requires_grad_(True)
        grad = torch.autograd.grad(loss(x), x)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert frozen.copied == 0, frozen.copied
    # the gradient is the loss' slope: a central difference along the gradient's own direction agrees
    direction = grad / grad.norm()
    eps = 1e-2
    with torch.inference_mode():
        slope = (loss(x0 + eps * direction) - loss(x0 - eps * direction)) / (2 * eps)
    torch.testing.assert_close(slope.float(), (grad * direction).sum().float(), rtol=2e-2, atol=1e-6)
