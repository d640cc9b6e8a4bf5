"""Binding guidance on the real hosts: prompt analysis node, SynGen, A-STAR, composition, bad input."""

import re

import comfy.sample
import comfy.samplers
import pytest
import torch

from harness.nodeutil import node_output, node_ui

LAYERS = "1/32 res: down+up (A&E)"
PROMPT = "a red crown and a golden strawberry"


@pytest.fixture(scope="module")
def analysed(nodes, tiny, encode):
    cache = {}

    def get(arch, text=PROMPT, **kw):
        key = (arch, text, tuple(sorted(kw.items())))
        if key not in cache:
            tm = tiny(arch)
            with torch.inference_mode():
                out = nodes["STORM_PromptAnalysis"]().analyze(clip=tm.clip, text=text, parser=kw.pop("parser", "auto"),
                                                              **kw)
            cache[key] = (tm, *node_output(out), encode(tm.clip, ""))
        return cache[key]

    return get


def run(model, guidance, pos, neg, nodes, seed, steps=10, hw=(32, 32)):
    with torch.inference_mode():
        sampler, history = nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name="euler",
                                                                attention_layers=LAYERS)
        latent = torch.zeros(1, 4, *hw)
        sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler="euler",
                                         scheduler="normal", model_options=model.model_options).sigmas
        comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, seed), 7.5, sampler, sigmas, pos, neg,
                                   latent, disable_pbar=True, seed=seed)
    return history.latest()


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_analysis_node_finds_the_bindings_at_clip_positions(analysed, arch):
    _, analysis, tokens, cond, text = analysed(arch)[:5]
    assert analysis.method.startswith("spacy:")
    pairs = {(b.noun.name, tuple(m.name for m in b.modifiers)): (b.noun.positions, b.modifiers[0].positions)
             for b in analysis.bindings}
    assert pairs == {("crown", ("red",)): ((3,), (2,)), ("strawberry", ("golden",)): ((7,), (6,))}
    assert [s.name for s in tokens.subjects] == ["crown", "strawberry"]
    assert cond[0][0].shape[1] == 77 and "crown [3] <- red [2]" in text


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_syngen_lowers_the_modifier_noun_divergence(pack, nodes, analysed, arch):
    tm, analysis, _, pos, _, neg = analysed(arch)
    syngen = pack.storm_ops.losses.syngen
    sets = syngen.syngen_sets(analysis.layout, analysis.bindings)
    for seed in (1, 2):
        kl = {}
        for label, size in (("off", 0.0), ("on", 20.0)):
            with torch.inference_mode():
                (guidance,) = nodes["STORM_SynGen"]().build(analysis=analysis, step_size=size, start_at=0.0, end_at=0.5,
                                                            include_entities=False)
            record = run(tm.model, guidance, pos, neg, nodes, seed)
            per_step = [syngen.syngen_loss(m.float(), sets).kl[0] for _, m in record.step_maps[:5]]
            kl[label] = torch.stack(per_step).mean(0)  # (pairs,), mean over the guided window
        assert bool((kl["on"] < kl["off"]).all()), (arch, seed, kl)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_astar_lowers_the_segregation_term(pack, nodes, analysed, arch):
    tm, _, tokens, pos, _, neg = analysed(arch)
    astar, maps_of = pack.storm_ops.losses.astar, pack.storm_ops.attention.maps
    for seed in (1, 2):
        seg = {}
        for label, size in (("off", 0.0), ("on", 20.0)):
            with torch.inference_mode():
                (guidance,) = nodes["STORM_AStar"]().build(tokens=tokens, step_size=size, start_at=0.0, end_at=0.5,
                                                           mask_threshold=0.5, end_tokens="auto")
            record = run(tm.model, guidance, pos, neg, nodes, seed)
            cfg = maps_of.MapSettings()  # the layout's own end-token convention
            groups = [s.positions for s in tokens.subjects]
            values = [float(astar.segregation(maps_of.word_maps(m.float(), tokens.layout, groups, cfg)).sum())
                      for _, m in record.step_maps[:5]]
            seg[label] = _mean(values)
        assert seg["on"] < seg["off"], (arch, seed, seg)


def test_losses_compose_with_their_own_windows(nodes, analysed):
    tm, analysis, tokens, pos, _, neg = analysed("sd15")
    with torch.inference_mode():
        (ae,) = nodes["STORM_AttendAndExcite"]().build(tokens=tokens, step_size=20.0, start_at=0.0, end_at=0.5,
                                                       thresholds="0.2:0.5", max_refine_iters=3, smoothing=True,
                                                       end_tokens="auto")
        (both,) = nodes["STORM_SynGen"]().build(analysis=analysis, step_size=20.0, start_at=0.0, end_at=0.3,
                                                include_entities=False, guidance=ae, weight=0.5)
    record = run(tm.model, both, pos, neg, nodes, seed=3)
    terms = {e.step: set(e.terms_before) for e in record.log}
    assert terms == {0: {"attend_excite", "syngen"}, 1: {"attend_excite", "syngen"}, 2: {"attend_excite", "syngen"},
                     3: {"attend_excite"}, 4: {"attend_excite"}}
    assert "syngen.kl" in record.log[0].metrics and "attend_excite.max_attention" in record.log[0].metrics


def test_astar_layout_masks_from_a_mask_batch(nodes, analysed):
    _, _, tokens, _, _ = analysed("sd15")[:5]
    left = torch.zeros(1, 64, 64)
    left[:, :, :32] = 1
    with torch.inference_mode():
        (g,) = nodes["STORM_AStar"]().build(tokens=tokens, step_size=20.0, start_at=0.0, end_at=0.5, mask_threshold=0.5,
                                            end_tokens="auto", masks=left, mask_subjects="strawberry")
    term = g.terms[0]
    assert term.masks[0] is None and term.masks[1] is not None
    with pytest.raises(Exception, match="STORM A-STAR: input 'mask_subjects'"):
        nodes["STORM_AStar"]().build(tokens=tokens, step_size=20.0, start_at=0.0, end_at=0.5, mask_threshold=0.5,
                                     end_tokens="auto", masks=left, mask_subjects="horse")


def test_no_modifiers_gives_a_clear_error(nodes, analysed):
    analysis = analysed("sd15", "a cat and a dog")[1]
    assert analysis.bindings == ()
    with pytest.raises(Exception, match=r"STORM SynGen: input 'analysis':.*no modifier bound to a noun"):
        nodes["STORM_SynGen"]().build(analysis=analysis, step_size=20.0, start_at=0.0, end_at=0.5,
                                      include_entities=False)
    (g,) = nodes["STORM_SynGen"]().build(analysis=analysis, step_size=20.0, start_at=0.0, end_at=0.5,
                                         include_entities=True)  # entities only: works
    assert g.terms[0].sets


def test_multi_piece_modifier_binds_all_its_pieces(nodes, analysed):
    analysis = analysed("sd15", "a checkered bowl on a red and blue table")[1]
    bowl = next(b for b in analysis.bindings if b.noun.name == "bowl")
    assert len(bowl.modifiers[0].positions) >= 2  # "checkered" is several CLIP pieces
    table = next(b for b in analysis.bindings if b.noun.name == "table")
    assert sorted(m.name for m in table.modifiers) == ["blue", "red"]
    nodes["STORM_SynGen"]().build(analysis=analysis, step_size=20.0, start_at=0.0, end_at=0.5, include_entities=False)


def test_missing_spacy_pipeline(pack, nodes, tiny, monkeypatch):
    nlp = pack.storm_ops.prompt.nlp
    monkeypatch.setattr(nlp, "available_pipelines", lambda: ())
    nlp.clear_cache()
    clip = tiny("sd15").clip
    try:
        with pytest.raises(Exception, match=r"STORM Prompt Analysis: input 'parser':.*spacy download en_core_web_sm"):
            nodes["STORM_PromptAnalysis"]().analyze(clip=clip, text=PROMPT, parser="spacy")
        out = nodes["STORM_PromptAnalysis"]().analyze(clip=clip, text=PROMPT, parser="auto")
    finally:
        nlp.clear_cache()
    analysis, _, _, text = node_output(out)
    assert analysis.method == "rules" and "rule-based fallback" in text
    assert {b.noun.name for b in analysis.bindings} == {"crown", "strawberry"}
    assert "storm_text" in node_ui(out)


@pytest.mark.parametrize("pipeline", ["os", "json", "/tmp", "en_core_web_xx"])
def test_pipeline_input_takes_only_installed_pipeline_names(pack, nodes, tiny, monkeypatch, pipeline):
    """A shared workflow cannot make the server load a directory or import a package through spaCy."""
    spacy = pytest.importorskip("spacy")

    def refuse(name, *args, **kwargs):
        raise AssertionError(f"spacy.load({name!r}) was called")

    monkeypatch.setattr(spacy, "load", refuse)
    installed = ", ".join(pack.storm_ops.prompt.nlp.available_pipelines()) or "none"
    clip = tiny("sd15").clip
    for parser in ("auto", "spacy", "rules"):
        with pytest.raises(Exception, match=rf"^STORM Prompt Analysis: input 'pipeline': '{re.escape(pipeline)}' "
                                            rf"is not .*\(installed: {re.escape(installed)}\)"):
            nodes["STORM_PromptAnalysis"]().analyze(clip=clip, text=PROMPT, parser=parser, pipeline=pipeline)


def test_unattachable_words_become_notes_not_errors(analysed):
    analysis, _, _, text = analysed("sd15", "red, very shiny, and blue")[1:5]
    assert analysis.notes and "Note:" in text


def test_user_overrides_replace_the_parse(nodes, analysed):
    tm = analysed("sd15")[0]
    with torch.inference_mode():
        out = nodes["STORM_PromptAnalysis"]().analyze(clip=tm.clip, text=PROMPT, parser="auto",
                                                      bindings="golden -> crown; red -> strawberry")
    analysis = node_output(out)[0]
    assert {(b.noun.name, b.modifiers[0].name) for b in analysis.bindings} == {("crown", "golden"), ("strawberry", "red")}
    with pytest.raises(Exception, match=r"STORM Prompt Analysis: input 'bindings':.*'silver'"):
        nodes["STORM_PromptAnalysis"]().analyze(clip=tm.clip, text=PROMPT, parser="auto", bindings="silver -> crown")
