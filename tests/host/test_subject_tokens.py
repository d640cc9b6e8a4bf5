"""STORM Subject Tokens with the host's real CLIP tokenizers (SD1 CLIP-L, SDXL CLIP-L + CLIP-G)."""

import comfy.sample
import pytest
import torch

from harness.nodeutil import node_output, node_ui

ARCHS = ["sd15", "sdxl"]


def run_tokens(nodes, clip, text, subjects):
    with torch.inference_mode():
        return nodes["STORM_SubjectTokens"]().run(clip=clip, text=text, subjects=subjects)


@pytest.mark.parametrize("arch", ARCHS)
def test_subject_words_become_ae_positions(nodes, tiny, arch):
    tokens, cond, text = node_output(run_tokens(nodes, tiny(arch).clip, "a cat and a dog", "cat, dog"))
    assert [s.positions for s in tokens.subjects] == [(2,), (5,)]
    assert "1:a 2:cat 3:and 4:a 5:dog" in text
    assert tokens.layout.length == 77 == cond[0][0].shape[1]


@pytest.mark.parametrize("arch", ARCHS)
def test_conditioning_equals_clip_text_encode(nodes, tiny, encode, arch):
    clip = tiny(arch).clip
    _, cond, _ = node_output(run_tokens(nodes, clip, "a red crown and a golden strawberry", "crown"))
    reference = encode(clip, "a red crown and a golden strawberry")
    assert torch.equal(cond[0][0], reference[0][0])
    if arch == "sdxl":
        assert torch.equal(cond[0][1]["pooled_output"], reference[0][1]["pooled_output"])


@pytest.mark.parametrize("arch", ARCHS)
def test_multi_piece_repeated_and_phrase_subjects(nodes, tiny, arch):
    clip = tiny(arch).clip
    prompt = "a tiramisu next to a teddy bear and another teddy bear"
    tokens, _, _ = node_output(run_tokens(nodes, clip, prompt, "tiramisu, teddy bear, bear#2"))
    layout = tokens.layout
    tiramisu, teddy, bear2 = tokens.subjects
    assert len(tiramisu.positions) >= 2  # BPE splits it; all its pieces are used
    assert "".join(layout.pieces[p].text for p in tiramisu.positions) == "tiramisu"
    assert [layout.pieces[p].text for p in teddy.positions] == ["teddy", "bear"]
    assert layout.pieces[bear2.positions[0]].text == "bear" and bear2.positions[0] > teddy.positions[-1]


def test_sd1_and_sdxl_tokenise_to_the_same_columns(nodes, tiny):
    prompt = "an astronaut riding a horse, photorealistic, 8k"
    a = node_output(run_tokens(nodes, tiny("sd15").clip, prompt, "astronaut, horse"))[0]
    b = node_output(run_tokens(nodes, tiny("sdxl").clip, prompt, "astronaut, horse"))[0]
    assert [s.positions for s in a.subjects] == [s.positions for s in b.subjects]
    # both read CLIP-L's columns; SDXL's CLIP-G half pads with 0, so its layout keeps words only
    assert (a.layout.end_tokens, b.layout.end_tokens) == ("sd1", "words")


@pytest.mark.parametrize("arch", ARCHS)
def test_prompts_over_77_tokens_use_the_second_chunk(nodes, tiny, arch):
    clip = tiny(arch).clip
    filler = ", ".join(["a very detailed masterpiece"] * 20)
    prompt = f"a cat and {filler}, and a dog"
    tokens, cond, text = node_output(run_tokens(nodes, clip, prompt, "cat, dog"))
    layout = tokens.layout
    assert layout.length == cond[0][0].shape[1] and layout.num_chunks >= 2
    cat, dog = tokens.subjects
    assert cat.positions == (2,)
    assert dog.positions[0] >= 77 and layout.pieces[dog.positions[0]].text == "dog"
    assert "chunk 2:" in text


@pytest.mark.parametrize("arch", ARCHS)
def test_errors_name_the_node_the_input_and_list_tokens(nodes, tiny, arch, pack):
    clip = tiny(arch).clip
    with pytest.raises(pack.storm_ops.errors.StormError) as err:
        run_tokens(nodes, clip, "a cat and a dog", "cat, horse")
    msg = str(err.value)
    assert msg.startswith("STORM Subject Tokens: input 'subjects':")
    assert "'horse'" in msg and "2:cat" in msg and "5:dog" in msg
    for spec, needle in [("", "no subjects"), ("99", "out of range"), ("0", "start token")]:
        with pytest.raises(pack.storm_ops.errors.StormError, match=needle):
            run_tokens(nodes, clip, "a cat and a dog", spec)


def test_tokenization_is_reported_to_the_ui(nodes, tiny):
    ui = node_ui(run_tokens(nodes, tiny("sd15").clip, "a cat", "cat"))
    assert "2:cat" in ui["storm_text"][0]


@pytest.mark.parametrize("arch", ARCHS)
def test_analysis_text_and_heatmap_labels_show_plain_words(nodes, tiny, encode, arch):
    """Whatever the installed transformers release: no ``</w>`` end-of-word markers in what users read."""
    tm = tiny(arch)
    with torch.inference_mode():
        analysis, tokens, cond, text = node_output(nodes["STORM_PromptAnalysis"]().analyze(
            clip=tm.clip, text="a red crown and a golden strawberry", parser="rules"))
        assert "crown [3]" in text and "strawberry [7]" in text and "</w>" not in text
        model, attention = nodes["STORM_AttentionRecorder"]().patch(model=tm.model,
                                                                    attention_layers="1/32 res: down+up (A&E)")
        latent = {"samples": comfy.sample.sample(model, torch.randn(1, 4, 16, 16), 1, 7.5, "euler", "normal", cond,
                                                 encode(tm.clip, ""), torch.zeros(1, 4, 16, 16), disable_pbar=True,
                                                 seed=0)}
        out = nodes["STORM_AttentionHeatmap"]().render(attention=attention, latent=latent, tokens=tokens,
                                                       show="all words", view="attention")
    assert node_ui(out)["storm_labels"] == ["a", "red", "crown", "and", "a", "golden", "strawberry"]


def test_analysis_text_says_what_was_not_understood_and_overrides_fix_it(nodes, tiny):
    """Tags, negation, depth and other languages are reported in the node's text with the way out."""
    clip = tiny("sd15").clip
    node = nodes["STORM_PromptAnalysis"]()
    with torch.inference_mode():
        analysis, tokens, _, text = node_output(node.analyze(
            clip=clip, text="a cat but no dog in front of a car, masterpiece, best quality, bokeh", parser="spacy"))
        assert [s.name for s in tokens.subjects] == ["cat", "car"]
        for said in ("tags are not objects: 'masterpiece', 'best quality', 'bokeh'", "'dog' is negated",
                     "negative prompt", "'in front of' is a depth relation", "relations override"):
            assert said in text
        prompt = "un gato rojo a la izquierda de un perro azul"
        analysis, tokens, _, text = node_output(node.analyze(clip=clip, text=prompt, parser="spacy"))
        assert tokens.subjects == () and "does not look like English" in text
        analysis, tokens, _, text = node_output(node.analyze(
            clip=clip, text=prompt, parser="spacy", subjects="gato, perro", bindings="rojo -> gato; azul -> perro",
            relations="gato left of perro"))
        assert [s.name for s in tokens.subjects] == ["gato", "perro"]
        assert [r.describe() for r in analysis.relations] == ["gato left of perro"] and len(analysis.bindings) == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_token_chips_match_the_models_tokenizer_and_their_refs_resolve(pack, nodes, tiny, arch):
    """The UI's chips (route /storm/tokens, no model loaded) show the columns the model's own tokenizer
    gives, and each chip's ref, written into 'subjects', selects exactly that word."""
    text = "a cat and a dog, a tiramisu, another dog (red:1.2) cat"
    words = pack.nodes.web_routes.prompt_tokens(text)["words"]
    assert [w["ref"] for w in words] == ["a", "cat", "and", "a#2", "dog", "a#3", "tiramisu", "another", "dog#2",
                                         "red", "cat#2"]
    assert next(w for w in words if w["text"] == "tiramisu")["positions"] == [8, 9, 10]  # one word, three pieces
    refs = ", ".join(w["ref"] for w in words)
    tokens, _, _ = node_output(run_tokens(nodes, tiny(arch).clip, text, refs))
    assert [list(s.positions) for s in tokens.subjects] == [w["positions"] for w in words]
    assert pack.nodes.web_routes.prompt_tokens("x" * 10_000)["words"]  # long input is cut, not refused
