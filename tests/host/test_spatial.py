"""STORM spatial transport on the real hosts: the relation sweep, masks, modes and bad input."""

import pytest
import torch

from harness.nodeutil import node_output
from harness.spatial_sweep import HEADER, sample_record, storm_guidance, sweep

SEEDS = range(16)


@pytest.fixture(scope="module")
def analysed(nodes, tiny, encode):
    cache = {}

    def get(arch, text="a cat to the left of a dog", relations=""):
        key = (arch, text, relations)
        if key not in cache:
            tm = tiny(arch)
            with torch.inference_mode():
                out = nodes["STORM_PromptAnalysis"]().analyze(clip=tm.clip, text=text, parser="auto",
                                                              relations=relations)
            cache[key] = (tm, *node_output(out)[:3], encode(tm.clip, ""))
        return cache[key]

    return get


def sample(model, guidance, pos, neg, nodes, seed, steps=8, hw=24):
    return sample_record(nodes, model, guidance, pos, neg, seed, steps, hw)


def storm(nodes, analysis, step_size=20.0, mode="paper", iters=2, **kw):
    return storm_guidance(nodes, analysis, step_size, mode, iters, **kw)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_guidance_puts_the_subject_on_the_requested_side_more_often(pack, tiny, encode, arch, capsys):
    tm = tiny(arch)
    result = sweep(pack, tm.model, tm.clip, encode(tm.clip, ""), "a cat to the left of a dog", SEEDS, arch)
    with capsys.disabled():
        print(f"\n{HEADER}\n{result.row()}")
    assert result.relation == "cat left of dog"
    assert result.guided > result.unguided


def test_right_of_is_guided_to_the_right(pack, tiny, encode):
    tm = tiny("sd15")
    result = sweep(pack, tm.model, tm.clip, encode(tm.clip, ""), "a dog to the right of a cat", range(8), "sd15")
    assert result.relation == "dog right of cat"
    assert result.guided > result.unguided


def test_painted_target_masks_move_the_subject(pack, nodes, analysed):
    tm, analysis, tokens, pos, neg = analysed("sd15")
    st = pack.storm_ops.losses.transport_core
    cat = analysis.relations[0].subject
    bottom_left = torch.zeros(1, 192, 192)
    bottom_left[:, 96:, :96] = 1.0
    inside = {}
    for label, masks in (("computed", None), ("painted", bottom_left)):
        guidance = storm(nodes, analysis, masks=masks, mask_subjects="cat" if masks is not None else "")
        shares = []
        for seed in range(4):
            record = sample(tm.model, guidance, pos, neg, nodes, seed)
            for step in record.info.guided_steps:  # the steps where the layout is being set
                maps = record.step_maps[step][1].float()
                cat_map = pack.storm_ops.attention.maps.word_maps(maps, tokens.layout, [cat.positions], st.TransportConfig().maps)[0, 0]
                h, w = cat_map.shape
                shares.append(float(cat_map[h // 2:, : w // 2].sum() / cat_map.sum()))
        inside[label] = sum(shares) / len(shares)
    # more of the cat's attention lies in the painted region than with the computed target
    assert inside["painted"] > inside["computed"] + 0.05, inside


def test_reference_mode_runs_and_is_logged(nodes, analysed):
    tm, analysis, _, pos, neg = analysed("sd15")
    record = sample(tm.model, storm(nodes, analysis, mode="reference"), pos, neg, nodes, seed=0, steps=6, hw=16)
    assert record.log and "storm.refine_gate" in record.log[-1].metrics
    assert all(torch.isfinite(torch.tensor(e.terms_after["storm"])).all() for e in record.log)


def test_storm_combines_with_attend_and_excite(nodes, analysed):
    tm, analysis, tokens, pos, neg = analysed("sd15")
    with torch.inference_mode():
        (ae,) = nodes["STORM_AttendAndExcite"]().build(tokens=tokens, step_size=20.0, start_at=0.0, end_at=0.5,
                                                       thresholds="", max_refine_iters=0, smoothing=True,
                                                       end_tokens="auto")
    both = storm(nodes, analysis, guidance=ae)
    record = sample(tm.model, both, pos, neg, nodes, seed=0, steps=6, hw=16)
    assert set(record.log[1].terms_before) == {"attend_excite", "storm"}


@pytest.mark.parametrize("text,relations,needle", [
    ("a cat to the left", "", r"only one object.*cat"),
    ("a cat and a dog", "", r"no spatial relation between two objects"),
    ("a cat and a dog", "cat left of dog; dog left of cat", r"contradictory relations.*cat left of dog"),
    ("a cat and a dog", "cat left of horse", r"'horse'"),
])
def test_bad_relations_name_the_words(nodes, analysed, tiny, text, relations, needle):
    if relations:  # the override is parsed by the analysis node
        with pytest.raises(Exception, match=r"STORM Prompt Analysis: input 'relations':.*" + needle):
            with torch.inference_mode():
                nodes["STORM_PromptAnalysis"]().analyze(clip=tiny("sd15").clip, text=text, parser="auto",
                                                        relations=relations)
        return
    analysis = analysed("sd15", text)[1]
    with pytest.raises(Exception, match=r"STORM Spatial Transport: input 'analysis':.*" + needle):
        storm(nodes, analysis)
