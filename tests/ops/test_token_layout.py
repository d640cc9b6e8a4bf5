"""Token layouts and subject resolution on hand-made tokenisations (real CLIP in tests/host)."""

from dataclasses import replace

import pytest
import torch

from harness.prompt_layout import END_ID, layout_of
from storm_ops.errors import StormError
from storm_ops.tokens.clip_vocab import clip_piece_text, clip_vocab_decoder
from storm_ops.tokens.identity import check_prompt_encoding, untile_encoding
from storm_ops.tokens.layout import END, PAD, START, WORD, PromptTokens, TokenLayout
from storm_ops.tokens.subjects import count_word, find_word, resolve_subjects

CAT_DOG = ["a</w>", "cat</w>", "and</w>", "a</w>", "dog</w>"]


def test_kinds_and_word_positions_for_both_padding_conventions():
    for pad in (END_ID, 0):
        lay = layout_of(CAT_DOG, pad_id=pad)
        assert lay.length == 77
        assert lay.pieces[0].kind == START and lay.pieces[6].kind == END
        assert all(p.kind == PAD for p in lay.pieces[7:])
        assert lay.word_positions == (1, 2, 3, 4, 5)
        assert [w.text for w in lay.words] == ["a", "cat", "and", "a", "dog"]


def test_subject_words_resolve_to_ae_indices():
    lay = layout_of(CAT_DOG)
    subjects = resolve_subjects(lay, "cat, dog")
    assert [s.positions for s in subjects] == [(2,), (5,)]  # A&E: "a cat and a dog" -> cat 2, dog 5


def test_multi_piece_words_phrases_and_punctuation():
    lay = layout_of(["a</w>", "tira", "misu</w>", "and</w>", "a</w>", "teddy</w>", "bear</w>", "'s</w>", ",</w>"])
    assert find_word(lay, "tiramisu") == (2, 3)
    assert find_word(lay, "Teddy  Bear") == (6, 7)
    assert find_word(lay, "bear's") == (7, 8)
    assert find_word(lay, "tira") is None  # a piece is not a word
    assert find_word(lay, "misu") is None


def test_repeated_words_pick_the_occurrence():
    lay = layout_of(["a</w>", "dog</w>", "chasing</w>", "a</w>", "dog</w>"])
    assert count_word(lay, "dog") == 2
    first, second = resolve_subjects(lay, "dog, dog#2")
    assert first.positions == (2,) and second.positions == (5,)
    with pytest.raises(StormError, match="only 2 time"):
        resolve_subjects(lay, "dog#3")
    with pytest.raises(StormError, match="same tokens"):
        resolve_subjects(lay, "dog, dog")


def test_explicit_indices_and_their_errors():
    lay = layout_of(CAT_DOG)
    assert resolve_subjects(lay, "2, 5")[1].positions == (5,)
    with pytest.raises(StormError, match="out of range") as err:
        resolve_subjects(lay, "80")
    assert err.value.input_name == "subjects" and "1-5" in str(err.value)
    with pytest.raises(StormError, match="start token"):
        resolve_subjects(lay, "0")
    with pytest.raises(StormError, match="end token"):
        resolve_subjects(lay, "6")


def test_absent_word_names_it_and_lists_the_tokens():
    lay = layout_of(CAT_DOG)
    with pytest.raises(StormError) as err:
        resolve_subjects(lay, "cat, horse")
    message = str(err.value)
    assert "'horse'" in message and "1:a 2:cat 3:and 4:a 5:dog" in message
    assert err.value.input_name == "subjects"


def test_empty_subject_list():
    for spec in ("", " , ;", "\n"):
        with pytest.raises(StormError, match="no subjects"):
            resolve_subjects(layout_of(CAT_DOG), spec)


def test_multi_chunk_prompts_use_global_columns():
    first = ["a</w>"] * 70 + ["cat</w>"]
    second = ["and</w>", "a</w>", "dog</w>"]
    lay = layout_of(None, chunks=[first, second])
    assert lay.length == 154 and lay.num_chunks == 2
    cat, dog = resolve_subjects(lay, "cat, dog")
    assert cat.positions == (71,) and dog.positions == (77 + 3,)
    assert "chunk 2: 78:and 79:a 80:dog" in lay.describe()


def test_softmax_masks_follow_the_ae_conventions():
    lay = layout_of(CAT_DOG)
    sd1 = lay.softmax_mask("sd1")
    assert not sd1[0] and not sd1[76] and sd1[1:76].all()  # positions 1..75
    words = lay.softmax_mask("words")
    assert words.nonzero().flatten().tolist() == [1, 2, 3, 4, 5]
    two = layout_of(None, chunks=[CAT_DOG, CAT_DOG]).softmax_mask("sd1")
    assert not two[77] and not two[153] and two[78:153].all()
    with pytest.raises(StormError):
        lay.softmax_mask("sd3")


def test_layout_validation():
    with pytest.raises(StormError):
        TokenLayout(())
    lay = layout_of(CAT_DOG)
    with pytest.raises(StormError):
        TokenLayout(lay.pieces[:50])
    assert lay.pieces[1].kind == WORD


def test_clip_piece_text_strips_the_end_of_word_marker_and_decodes_bytes():
    assert clip_piece_text("cat</w>") == ("cat", True)
    assert clip_piece_text("tira") == ("tira", False)
    assert clip_piece_text(",</w>") == (",", True)
    assert clip_piece_text("<|startoftext|>") == ("<|startoftext|>", False)
    # byte-level pieces: "café" is written c a f \u00c3 \u00a9 (the UTF-8 bytes C3 A9 as alphabet characters)
    assert clip_piece_text("caf\u00c3\u00a9</w>") == ("caf\u00e9", True)
    # a character whose bytes are split over two pieces cannot be shown whole
    assert clip_piece_text("\u00c3") == ("\ufffd", False)
    # bytes outside the printable range live at U+0100 + n: a space (0x20) is U+0120
    assert clip_piece_text("\u0120a</w>") == ("a", True)


def test_vocab_decoder_marks_unknown_ids():
    decode = clip_vocab_decoder({7: "dog</w>"})
    assert decode(7) == ("dog", True)
    assert decode(8) == ("<8>", True)


def _encoded(pieces, seed=0, width=8):
    lay = layout_of(pieces)
    enc = torch.randn(lay.length, width, generator=torch.Generator().manual_seed(seed))
    return replace(lay, encoding=enc)


def test_prompt_identity_checks_columns_width_and_words():
    lay = _encoded(CAT_DOG)
    check_prompt_encoding(lay, lay.encoding.clone(), what="x", input_name="positive", remedy="r")
    # padding columns are not compared (a host may pad differently), every other column is
    noisy = lay.encoding.clone()
    noisy[10:] += 5.0
    check_prompt_encoding(lay, noisy, what="x", input_name="positive", remedy="r")
    other = lay.encoding.clone()
    other[2] = torch.randn(8)
    with pytest.raises(StormError, match=r"x is not the encoding of the prompt .*\('a cat and a dog'\): it differs "
                                         r"at columns 2:cat\. r") as info:
        check_prompt_encoding(lay, other, what="x", input_name="positive", remedy="r")
    assert info.value.input_name == "positive"
    with pytest.raises(StormError, match=r"x has 154 token columns .* with 77; r"):
        check_prompt_encoding(lay, torch.cat([lay.encoding] * 2), what="x", input_name="tokens", remedy="r")
    with pytest.raises(StormError, match=r"x has 4 features per token but the tokens' CLIP encodes 8"):
        check_prompt_encoding(lay, lay.encoding[:, :4], what="x", input_name="tokens", remedy="r")


def test_untile_encoding_recovers_only_a_repeated_prompt():
    enc = torch.randn(77, 4)
    assert torch.equal(untile_encoding(torch.cat([enc, enc]), 77), enc)
    assert untile_encoding(torch.cat([enc, enc + 1]), 77) is None
    assert untile_encoding(enc, 77) is enc
    assert untile_encoding(torch.randn(100, 4), 77) is None


# ---------------------------------------------------------------------- DiT streams (T5 rows)
SP = "\u2581"
#: "a cat, and a dog" as T5's sentencepiece writes it ("a" is the mark alone, then "a")
T5_CAT_DOG = [SP, "a", f"{SP}cat", ",", f"{SP}and", SP, "a", f"{SP}dog", "</s>"] + ["<pad>"] * 68


def test_sentencepiece_stream_groups_pieces_into_words_by_the_boundary_mark():
    t5 = TokenLayout.from_sentencepiece(T5_CAT_DOG, end_piece="</s>", name="T5")
    assert t5.length == 77 and t5.end_tokens == "words"
    assert [p.kind for p in t5.pieces[:10]] == [WORD] * 8 + [END, PAD]
    # punctuation is a word of its own, as in CLIP, so "cat" names the word T5 writes "cat" + ","
    assert [(w.text, w.positions) for w in t5.words] == [
        ("a", (0, 1)), ("cat", (2,)), (",", (3,)), ("and", (4,)), ("a", (5, 6)), ("dog", (7,))]
    assert [s.positions for s in resolve_subjects(t5, "cat, dog")] == [(2,), (7,)]


def test_a_further_stream_adds_each_words_columns_from_every_stream():
    clip = layout_of(["a</w>", "cat</w>", ",</w>", "and</w>", "a</w>", "dog</w>"], pad_id=0)
    t5 = TokenLayout.from_sentencepiece(T5_CAT_DOG, end_piece="</s>", name="T5")
    both = clip.with_stream(t5)
    assert both.length == 154 and both.streams == (("T5", 77),) and both.num_chunks == 1
    # words are the first stream's, each with its columns in T5 (matched by letters and digits)
    assert [(w.text, w.positions) for w in both.words] == [
        ("a", (1, 77, 78)), ("cat", (2, 79)), (",", (3,)), ("and", (4, 81)), ("a", (5, 82, 83)),
        ("dog", (6, 84))]
    assert [s.positions for s in resolve_subjects(both, "cat, dog#1")] == [(2, 79), (6, 84)]
    assert both.describe().splitlines() == ["CLIP: 1:a 2:cat 3:, 4:and 5:a 6:dog",
                                            "T5: 77:- 78:a 79:cat 80:, 81:and 82:- 83:a 84:dog"]
    assert "CLIP 1 x 77 + T5 77" in PromptTokens("a cat, and a dog", both, ()).describe()
    # a word's columns per stream (the UI's chips): streams holding none are left out
    assert both.by_stream((2, 79)) == (("CLIP", (2,)), ("T5", (79,)))
    assert both.by_stream((80,)) == (("T5", (80,)),) and clip.by_stream((2,)) == (("CLIP", (2,)),)
    # the softmax over tokens keeps every stream's words; "sd1" drops only the CLIP chunk's ends
    words = both.softmax_mask("words")
    assert words.nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6] + list(range(77, 85))
    sd1 = both.softmax_mask("sd1")
    assert sd1[1:76].all() and not sd1[0] and not sd1[76] and sd1[77:85].all() and not sd1[85:].any()


def test_word_matching_skips_what_one_tokenizer_splits_or_drops():
    clip = layout_of(["a</w>", "red</w>", "tira", "misu</w>", "near</w>", "a</w>", "mug</w>"], pad_id=0)
    t5 = TokenLayout.from_sentencepiece([f"{SP}a", f"{SP}red", f"{SP}tiramisu", f"{SP}mug", "</s>", "<pad>"],
                                        end_piece="</s>", name="T5")
    both = clip.with_stream(t5)  # T5 "lost" the word "near" and "a": the rest still lines up
    assert {w.text: w.positions for w in both.words} == {
        "a": (6,), "red": (2, 78), "tiramisu": (3, 4, 79), "near": (5,), "mug": (7, 80)}


def test_stream_validation():
    clip = layout_of(CAT_DOG)
    with pytest.raises(StormError, match="stream starts"):
        TokenLayout(clip.pieces, streams=(("T5", 200),))
    with pytest.raises(StormError, match="whole number"):
        TokenLayout(clip.pieces + clip.pieces[:5], streams=(("T5", 80),))
    with pytest.raises(StormError, match="one stream"):
        clip.with_stream(clip.with_stream(TokenLayout.from_sentencepiece(["</s>", "<pad>", "<pad>"], end_piece="</s>", name="T5")))
