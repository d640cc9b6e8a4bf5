"""Attention maps and guidance of DiT models (SD3's MMDiT, Flux) through the pack's nodes, on tiny models.

The Attention Recorder and the guided samplers record the image-to-text part of every block's joint
attention; Subject Tokens finds the prompt's words in every text stream of the conditioning (SD3: CLIP
then T5 rows; Flux: T5 rows), the Attention Heatmap shows them and the losses read them, as for a UNet.
"""

import comfy.sample
import pytest
import torch

from harness.nodeutil import call_node, guided_log_of_method, weakest_subject_attention
from harness.tiny_dit import DIT_ARCHS, build_tiny_dit
from harness.tiny_models import tiny_conditioning

LATENT = (1, 16, 8, 12)  # 64 x 96 px: 4 x 6 patches of 2 x 2
STEPS = 3
#: text rows of "a cat and a dog": SD3 (T5 off in the tiny model) its 77 CLIP columns, Flux 256 T5 rows, Chroma
#: its 8 T5 rows (no padding)
ROWS = {"sd3": 77, "flux": 256, "chroma": 8}
#: the cfg each family is sampled with in these tests (Flux is guidance-distilled: cfg 1)
CFG = {"sd3": 4.0, "flux": 1.0, "chroma": 3.5}
#: A&E step sizes for the tiny models' test (not a calibrated default: the paper's 20 is for SD1.4's UNet)
STEP_SIZE = {"sd3": 40.0, "flux": 80.0, "chroma": 80.0}


@pytest.fixture(scope="module", params=DIT_ARCHS)
def dit(request):
    with torch.inference_mode():
        return build_tiny_dit(request.param)


@pytest.fixture(scope="module")
def prompt(dit, nodes):
    """Subject Tokens' tokens and conditioning for "a cat and a dog", and the empty prompt as the negative."""
    with torch.inference_mode():
        tokens, positive, _ = call_node(nodes["STORM_SubjectTokens"], clip=dit.clip, text="a cat and a dog",
                                        subjects="cat, dog")
        negative = tiny_conditioning(dit.clip, "")
    return tokens, positive, negative


def _sample(model, positive, negative, seed=3):
    latent = torch.zeros(LATENT)
    with torch.inference_mode():
        return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), STEPS, 3.0, "euler", "simple",
                                   positive, negative, latent, seed=seed, disable_pbar=True)


def test_subject_tokens_find_the_words_in_the_rows_of_the_conditioning(dit, prompt):
    tokens, positive, _ = prompt
    assert positive[0][0].shape[1] == tokens.layout.length == ROWS[dit.arch]
    cat, dog = tokens.subjects
    if dit.arch in ("flux", "chroma"):  # T5 alone: "a" is the boundary mark and "a"; no start token
        assert tokens.layout.streams == () and tokens.layout.name == "T5"
        assert (cat.positions, dog.positions) == ((2,), (6,))
    else:
        assert (cat.positions, dog.positions) == ((2,), (5,))


def test_sd3_with_clip_and_t5_rows_finds_each_word_in_both_streams(host):
    """SD3's usual conditioning: 77 CLIP columns then the T5 rows; each word has its columns in both (the
    real tokenizers; a 4096-wide T5 is too big for a test, so only the layout is built)."""
    from harness.host import load_pack
    from harness.tiny_dit import build_tiny_dit

    pack = load_pack()
    with torch.inference_mode():
        clip = build_tiny_dit("sd3").clip
    layout = pack.nodes.host_tokenizer.prompt_layout(clip, "A red crown, and a golden strawberry", rows=154)
    assert layout.streams == (("T5", 77),) and layout.length == 154
    assert layout.describe().splitlines() == [
        "CLIP: 1:a 2:red 3:crown 4:, 5:and 6:a 7:golden 8:strawberry",
        "T5: 77:A 78:red 79:crown 80:, 81:and 82:- 83:a 84:golden 85:strawberry"]  # T5 keeps case, splits "a"
    assert [(w.text, w.positions) for w in layout.words] == [
        ("a", (1, 77)), ("red", (2, 78)), ("crown", (3, 79)), (",", (4,)), ("and", (5, 81)), ("a", (6, 82, 83)),
        ("golden", (7, 84)), ("strawberry", (8, 85))]
    with pytest.raises(Exception, match="conditioning has 100 rows"):
        pack.nodes.host_tokenizer.prompt_layout(clip, "a cat", rows=100)


def _capturing(model, calls):
    """``model`` with an override that keeps every joint call's inputs, then runs the recorder's override
    (so the recorder also sees a chained override and must pass it on)."""
    options = model.clone().model_options
    recorder_tap = options["transformer_options"]["optimized_attention_override"]

    def capture(func, *args, **kwargs):
        calls.append((args[0].detach().clone(), args[1].detach().clone(),
                      args[3] if len(args) > 3 else kwargs["heads"], bool(kwargs.get("skip_reshape")),
                      list(kwargs["transformer_options"]["cond_or_uncond"])))
        return recorder_tap(func, *args, **kwargs)

    patched = model.clone()
    patched.model_options["transformer_options"]["optimized_attention_override"] = capture
    return patched


def _expected_first_step(calls, rows, blocks, grid):
    """Step 1's map from the raw joint calls: the conditional image queries' softmax over the text keys
    only, averaged over heads and blocks, as (1, T, h, w)."""
    total = 0
    for q, k, heads, heads_first, cond_or_uncond in calls[:blocks]:
        if not heads_first:
            q = q.reshape(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)
            k = k.reshape(k.shape[0], k.shape[1], heads, -1).transpose(1, 2)
        i = cond_or_uncond.index(0)
        qi, ki = q[i:i + 1, :, rows:].float(), k[i:i + 1, :, :rows].float()
        total = total + torch.softmax(qi @ ki.transpose(-1, -2) * qi.shape[-1] ** -0.5, -1).mean(1)
    return (total / blocks).transpose(1, 2).reshape(1, rows, *grid)


@pytest.mark.parametrize("family", DIT_ARCHS)
def test_token_chips_of_a_dit_family_show_the_rows_of_its_conditioning(pack, family):
    """The UI's chips for a prompt fed to an SD3 or Flux loader (route /storm/tokens?family=..., no model
    loaded) give each word the rows the node finds in that family's full conditioning (SD3: CLIP + T5
    rows; Flux: T5 rows), grouped by stream."""
    text = "a cat and a tiramisu, (red:1.2) dog"
    with torch.inference_mode():
        clip = build_tiny_dit(family).clip
    # a short prompt's rows with every text encoder loaded (Chroma: the prompt's own T5 rows)
    rows = {"sd3": 77 + 77, "flux": 256}.get(family) or int(tiny_conditioning(clip, text)[0][0].shape[1])
    node_layout = pack.nodes.host_tokenizer.prompt_layout(clip, text, rows=rows)
    reply = pack.nodes.web_routes.prompt_tokens(text, family)
    words = [w for w in node_layout.words if any(c.isalnum() for c in w.text)]
    assert [(w["text"], w["positions"]) for w in reply["words"]] == [(w.text, list(w.positions)) for w in words]
    assert reply["columns"] == node_layout.columns_summary()
    cat = next(w for w in reply["words"] if w["text"] == "cat")
    if family == "sd3":
        assert reply["columns"] == "CLIP 1 x 77 + T5 77" and cat["streams"] == [["CLIP", [2]], ["T5", [79]]]
        assert reply["streams"] == ["CLIP", "T5"]
    else:
        assert reply["columns"] == f"1 x {rows}" and cat["streams"] == [["T5", [2]]] and reply["streams"] == ["T5"]
    with pytest.raises(Exception, match="unknown model family"):
        pack.nodes.web_routes.prompt_tokens(text, "sdxl")


def test_the_recorder_records_image_to_text_attention_and_leaves_the_sample_unchanged(dit, prompt, nodes):
    tokens, positive, negative = prompt
    plain = _sample(dit.model, positive, negative)
    with torch.inference_mode():
        model, attention = call_node(nodes["STORM_AttentionRecorder"], model=dit.model)
    calls = []
    recorded = _sample(_capturing(model, calls), positive, negative)
    assert torch.equal(recorded, plain)  # recording calls the host's kernel unchanged
    record = attention.latest()
    rows, grid = ROWS[dit.arch], (LATENT[2] // 2, LATENT[3] // 2)
    assert record.info.family == dit.arch and len(record.info.layers) == 4
    assert [tuple(m.shape) for _, m in record.step_maps] == [(1, rows, *grid)] * STEPS
    first = record.step_maps[0][1].float()
    torch.testing.assert_close(first.sum(1), torch.ones(1, *grid), atol=2e-3, rtol=0)  # a softmax over the text
    torch.testing.assert_close(first, _expected_first_step(calls, rows, 4, grid), atol=2e-3, rtol=0)


def test_sd35_image_only_self_attention_is_not_recorded(nodes):
    """SD3.5-Medium's blocks also run an attention over the image rows alone (``x_block_self_attn``); the
    recorder takes only the joint calls: one per block, each a softmax over the text rows."""
    with torch.inference_mode():
        dit = build_tiny_dit("sd3", config={"x_block_self_attn_layers": [0, 2]})
        tokens, positive, _ = call_node(nodes["STORM_SubjectTokens"], clip=dit.clip, text="a cat and a dog",
                                        subjects="cat, dog")
        negative = tiny_conditioning(dit.clip, "")
        model, attention = call_node(nodes["STORM_AttentionRecorder"], model=dit.model)
    assert sum(b.x_block.x_block_self_attn for b in dit.model.model.diffusion_model.joint_blocks) == 2
    calls = []
    _sample(_capturing(model, calls), positive, negative)
    rows, grid = ROWS["sd3"], (LATENT[2] // 2, LATENT[3] // 2)
    assert len(calls) == STEPS * (4 + 2)  # 4 joint calls and 2 image-only calls per step
    record = attention.latest()
    assert len(record.step_maps) == STEPS
    joint = [c for c in calls if c[1].shape[1] == rows + grid[0] * grid[1]]
    first = record.step_maps[0][1].float()
    torch.testing.assert_close(first, _expected_first_step(joint, rows, 4, grid), atol=2e-3, rtol=0)


def test_the_heatmap_shows_each_subject_of_a_dit_run(dit, prompt, nodes):
    tokens, positive, negative = prompt
    with torch.inference_mode():
        model, attention = call_node(nodes["STORM_AttentionRecorder"], model=dit.model)
    samples = _sample(model, positive, negative)
    with torch.inference_mode():
        grid, overlay, masks, log = call_node(nodes["STORM_AttentionHeatmap"], attention=attention,
                                              latent={"samples": samples}, tokens=tokens)
    assert masks.shape == (2, LATENT[2] * 8, LATENT[3] * 8) and grid.shape[-1] == 3
    assert float(masks.amax()) == pytest.approx(1.0) and not torch.equal(masks[0], masks[1])
    assert log == "no guided steps in this run"


def _guided(nodes, dit, tokens, positive, negative, step_size, seed=5, steps=6):
    with torch.inference_mode():
        (guidance,) = call_node(nodes["STORM_AttendAndExcite"], tokens=tokens, step_size=step_size, start_at=0.0,
                                end_at=1.0, thresholds="", max_refine_iters=0)
        out, attention = call_node(nodes["STORM_GuidedKSampler"], model=dit.model, guidance=guidance, seed=seed,
                                   steps=steps, cfg=CFG[dit.arch], sampler_name="euler", scheduler="simple", positive=positive,
                                   negative=negative, latent_image={"samples": torch.zeros(LATENT)})
    return out["samples"], attention.latest()


def test_guided_ksampler_off_equals_the_host_sampler_on_a_dit(dit, nodes, prompt):
    tokens, positive, negative = prompt
    samples, record = _guided(nodes, dit, tokens, positive, negative, step_size=0.0)
    with torch.inference_mode():
        noise = comfy.sample.prepare_noise(torch.zeros(LATENT), 5)
        reference = comfy.sample.sample(dit.model, noise, 6, CFG[dit.arch], "euler", "simple", positive, negative,
                                        torch.zeros(LATENT), seed=5, disable_pbar=True)
    assert torch.equal(samples, reference)
    assert len(record.step_maps) == 6 and record.info.family == dit.arch


def test_attend_and_excite_raises_the_weakest_subjects_attention_on_a_dit(dit, nodes, prompt, pack):
    """Same seed and noise: with guidance the weakest subject's smoothed max attention (1 - the A&E loss) in the
    conditional passes is higher than without, and each guided step's update lowered the loss it read."""
    tokens, positive, negative = prompt
    _, off = _guided(nodes, dit, tokens, positive, negative, step_size=0.0)
    _, on = _guided(nodes, dit, tokens, positive, negative, step_size=STEP_SIZE[dit.arch])
    weakest_off = weakest_subject_attention(pack, off, tokens)
    weakest_on = weakest_subject_attention(pack, on, tokens)
    assert sum(weakest_on[1:]) / 5 > sum(weakest_off[1:]) / 5 + 0.05, (weakest_off, weakest_on)
    assert on.info.guided_steps == [0, 1, 2, 3, 4, 5] and on.info.weights_copied == 0
    assert all(e.updates == 1 for e in on.log)


@pytest.mark.parametrize("method", ["syngen", "storm", "astar"])
def test_binding_and_spatial_guidance_run_on_a_dit(dit, nodes, method):
    """SynGen's, STORM's and A-STAR's losses read DiT maps like UNet maps: each guided step logs finite losses
    and applies its update."""
    log = guided_log_of_method(nodes, dit.clip, dit.model, method, cfg=CFG[dit.arch], latent=torch.zeros(LATENT))
    assert log and all(e.updates >= 1 and not e.skipped for e in log)
    assert all(isinstance(v, float) for e in log for v in e.loss_before + e.loss_after)


@pytest.mark.parametrize("dit", ["flux"], indirect=True)  # the tiny SD3 has CLIP rows only
def test_prompt_analysis_binds_words_in_the_t5_rows(dit, nodes):
    with torch.inference_mode():
        analysis, tokens, conditioning, _ = call_node(nodes["STORM_PromptAnalysis"], clip=dit.clip,
                                                      text="a red crown and a golden strawberry", parser="rules")
    assert conditioning[0][0].shape[1] == tokens.layout.length == 256
    bound = {b.noun.name: [m.name for m in b.modifiers] for b in analysis.bindings}
    assert bound == {"crown": ["red"], "strawberry": ["golden"]}
    # T5 writes each "a" as the boundary mark then "a": 0:▁ 1:a 2:red 3:crown 4:and 5:▁ 6:a 7:golden 8:strawberry
    assert [e.positions for e in analysis.entities] == [(3,), (8,)]
