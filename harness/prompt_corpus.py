"""Regression corpus of realistic prompts for the prompt analysis, and its scorer.

Every case gives the prompt, its category and what a correct analysis finds: the objects (the nouns
a guidance method should make appear, compounds as one name: "fire hydrant", ``#2`` for a repeated
word), the bindings (noun -> its modifiers) and the spatial relations (``subject / relation /
object``). Quality tags, style, medium, camera and lighting words, artists and negated things are
never objects. Relations are compared in canonical form ("a right of b" == "b left of a"). Cases
with ``note`` also need a note of the analysis containing that text (negation, depth, language).

:func:`score` runs the analysis on every case with :func:`harness.prompt_layout.clip_layout`
(no ComfyUI) and returns exact-match rates; ``python -m scripts.score_prompt_analysis`` prints them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    category: str
    prompt: str
    objects: tuple[str, ...]
    bindings: tuple[tuple[str, tuple[str, ...]], ...]
    relations: tuple[tuple[str, str, str], ...]
    note: str = ""


def _case(category, prompt, objects="", bindings="", relations="", note=""):
    objs = tuple(o.strip() for o in objects.split(",") if o.strip())
    binds = []
    for item in (s.strip() for s in bindings.split(";") if s.strip()):
        mods, noun = item.split("->")
        binds.append((noun.strip(), tuple(sorted(m.strip() for m in mods.split(",")))))
    rels = tuple(tuple(p.strip() for p in r.split("/")) for r in relations.split(";") if r.strip())
    return Case(category, prompt, objs, tuple(sorted(binds)), rels, note)


_TAIL_A = ("masterpiece, best quality, 8k uhd, dslr, artstation, depth of field, volumetric lighting, bokeh, "
           "award winning photo, vivid colors, highly detailed, sharp focus, cinematic composition")
_TAIL_B = ("ultra realistic, intricate details, octane render, unreal engine 5, trending on artstation, "
           "by greg rutkowski, concept art, matte painting, soft lighting, 4k, hdr, film grain")
_TAIL_C = ("(masterpiece:1.2), (best quality:1.1), professional photography, 85mm, f/1.8, studio lighting, "
           "rim light, high resolution, sharp focus, detailed skin texture, embedding:easynegative")

CORPUS: tuple[Case, ...] = (
    # ------------------------------------------------------------------ tag-heavy SD prompts
    _case("tags", "masterpiece, best quality, a red car, 8k uhd, dslr", "car", "red -> car"),
    _case("tags", "a cat sitting on a sofa, masterpiece, best quality, highly detailed", "cat, sofa"),
    _case("tags", "portrait of a woman with blue eyes, artstation, trending on artstation, sharp focus",
          "woman, eyes", "blue -> eyes"),
    _case("tags", "a lighthouse on a cliff, volumetric lighting, bokeh, depth of field, 8k", "lighthouse, cliff"),
    _case("tags", "a corgi in a park, dslr, 85mm, soft lighting", "corgi, park"),
    _case("tags", "a red sports car on a wet road, cinematic, photorealistic, unreal engine, octane render",
          "sports car, road", "red -> sports car; wet -> road"),
    _case("tags", "an astronaut riding a horse, photorealistic, 8k", "astronaut, horse"),
    _case("tags", "a bowl of ramen, food photography, studio lighting, high resolution", "bowl, ramen"),
    _case("tags", "a wooden cabin in a snowy forest, concept art, matte painting, trending on artstation",
          "cabin, forest", "wooden -> cabin; snowy -> forest"),
    _case("tags", "a fox in the snow, award winning photo, sharp focus, 4k", "fox, snow"),
    _case("tags", "a steampunk owl, intricate details, ornate, brass gears, 4k", "owl, gears",
          "steampunk -> owl; brass -> gears"),
    _case("tags", "a white cat with green eyes, cute, fluffy, soft light, bokeh", "cat, eyes",
          "white -> cat; green -> eyes"),
    _case("tags", "a castle on a hill, fantasy art, digital painting, by greg rutkowski, epic composition",
          "castle, hill"),
    _case("tags", "a dragon flying over a city, dramatic lighting, cinematic shot, 8k uhd", "dragon, city",
          relations="dragon / above / city"),
    _case("tags", "a vase of sunflowers on a table, oil painting, impressionism, thick brushstrokes",
          "vase, sunflowers, table"),
    _case("tags", "close-up of a bee on a flower, macro photography, shallow depth of field", "bee, flower"),
    _case("tags", "a small robot, isometric view, 3d render, low poly", "robot", "small -> robot"),
    _case("tags", "a teddy bear on a bed, soft focus, warm tones, film grain", "teddy bear, bed"),
    _case("tags", "a knight in shining armor, highly detailed, artstation, concept art, 4k", "knight, armor",
          "shining -> armor"),
    _case("tags", "a bowl of fruit, still life, chiaroscuro, oil on canvas", "bowl, fruit"),
    _case("tags", "an old man with a beard, portrait, studio lighting, 85mm, sharp focus", "man, beard",
          "old -> man"),
    _case("tags", "a pink flamingo standing in water, wildlife photography, golden hour", "flamingo, water",
          "pink -> flamingo"),
    _case("tags", "a vintage camera on a desk, product photo, white background, studio light", "camera, desk",
          "vintage -> camera"),
    _case("tags", "masterpiece, best quality, ultra detailed, a girl in a red dress, standing in a field of flowers",
          "girl, dress, field, flowers", "red -> dress"),
    _case("tags", "a tiger in the jungle, (masterpiece), best quality, sharp focus, volumetric fog", "tiger, jungle"),
    _case("tags", "a glass of wine, bokeh, depth of field, 50mm, professional photo", "glass, wine"),
    _case("tags", "a blue butterfly on a yellow flower, macro, 8k, hyperrealistic, award winning",
          "butterfly, flower", "blue -> butterfly; yellow -> flower"),
    _case("tags", "a lonely tree on a hill, minimalism, long exposure, hdr, 4k wallpaper", "tree, hill",
          "lonely -> tree"),
    _case("tags", "a samurai with a katana, ink drawing, sumi-e style, high contrast", "samurai, katana"),
    _case("tags", "a cozy living room with a fireplace, interior design, architectural photography, 8k",
          "living room, fireplace", "cozy -> living room"),
    # ------------------------------------------------------------------ natural sentences
    _case("natural", "a red crown and a golden strawberry", "crown, strawberry", "red -> crown; golden -> strawberry"),
    _case("natural", "a cat sitting on a wooden chair", "cat, chair", "wooden -> chair"),
    _case("natural", "a man wearing a blue shirt and red shoes", "man, shirt, shoes", "blue -> shirt; red -> shoes"),
    _case("natural", "a dog chasing a ball in the garden", "dog, ball, garden"),
    _case("natural", "two apples and a banana on a plate", "apples, banana, plate"),
    _case("natural", "a black and white cat sleeping on a pillow", "cat, pillow", "black, white -> cat"),
    _case("natural", "the dog is brown and the cat is white", "dog, cat", "brown -> dog; white -> cat"),
    _case("natural", "a car that is red", "car", "red -> car"),
    _case("natural", "a little girl reading a book under a tree", "girl, book, tree", "little -> girl",
          "girl / below / tree"),
    _case("natural", "a yellow bird and a green frog", "bird, frog", "yellow -> bird; green -> frog"),
    _case("natural", "an elephant and a giraffe at the zoo", "elephant, giraffe, zoo"),
    _case("natural", "a purple teapot with a gold lid", "teapot, lid", "purple -> teapot; gold -> lid"),
    _case("natural", "a horse grazing in a green meadow", "horse, meadow", "green -> meadow"),
    _case("natural", "a woman holding an umbrella in the rain", "woman, umbrella, rain"),
    _case("natural", "a boy and his dog playing in the snow", "boy, dog, snow"),
    _case("natural", "a bicycle leaning against a brick wall", "bicycle, wall", "brick -> wall"),
    _case("natural", "a plate of spaghetti with meatballs", "plate, spaghetti, meatballs"),
    _case("natural", "a silver spoon in a ceramic bowl", "spoon, bowl", "silver -> spoon; ceramic -> bowl"),
    _case("natural", "a photo of a brown bear catching a fish", "bear, fish", "brown -> bear"),
    _case("natural", "a painting of a sailboat on a stormy sea", "sailboat, sea", "stormy -> sea"),
    _case("natural", "a fluffy white rabbit eating a carrot", "rabbit, carrot", "fluffy, white -> rabbit"),
    _case("natural", "a clock tower in a small town", "clock tower, town", "small -> town"),
    _case("natural", "a green apple and a red apple", "apple, apple#2", "green -> apple; red -> apple#2"),
    _case("natural", "a penguin wearing a tiny hat", "penguin, hat", "tiny -> hat"),
    _case("natural", "an orange cat and a gray mouse", "cat, mouse", "orange -> cat; gray -> mouse"),
    _case("natural", "a laptop and a cup of coffee on a desk", "laptop, cup, coffee, desk"),
    _case("natural", "a child flying a kite on the beach", "child, kite, beach"),
    _case("natural", "a blue vase with pink roses", "vase, roses", "blue -> vase; pink -> roses"),
    _case("natural", "a striped cat and a spotted dog", "cat, dog", "striped -> cat; spotted -> dog"),
    _case("natural", "a tall giraffe eating leaves from a tree", "giraffe, leaves, tree", "tall -> giraffe"),
    # ------------------------------------------------------------------ long prompts (over 77 tokens)
    _case("long", "a beautiful young woman with long red hair wearing a green velvet dress, standing in an ancient "
          "library, " + _TAIL_A + ", " + _TAIL_B, "woman, hair, dress, library",
          "beautiful, young -> woman; long, red -> hair; green, velvet -> dress; ancient -> library"),
    _case("long", "a red fox sitting next to a white rabbit in a snowy forest, " + _TAIL_A + ", " + _TAIL_C,
          "fox, rabbit, forest", "red -> fox; white -> rabbit; snowy -> forest", "fox / near / rabbit"),
    _case("long", "a cat to the left of a dog on a green lawn, " + _TAIL_A + ", " + _TAIL_B, "cat, dog, lawn",
          "green -> lawn", "cat / left / dog"),
    _case("long", "an old wooden boat on a calm lake at sunset, " + _TAIL_B + ", " + _TAIL_A, "boat, lake",
          "old, wooden -> boat; calm -> lake"),
    _case("long", "a portrait of a smiling man in a gray suit, " + _TAIL_C + ", " + _TAIL_A, "man, suit",
          "smiling -> man; gray -> suit"),
    _case("long", "a knight in silver armor riding a black horse through a burning village, " + _TAIL_B + ", "
          + _TAIL_A, "knight, armor, horse, village", "silver -> armor; black -> horse; burning -> village"),
    _case("long", "a red apple above a blue bowl on a kitchen table, " + _TAIL_C + ", " + _TAIL_B,
          "apple, bowl, kitchen table", "red -> apple; blue -> bowl", "apple / above / bowl"),
    _case("long", _TAIL_A + ", a small yellow bird on a branch, " + _TAIL_B, "bird, branch", "small, yellow -> bird"),
    _case("long", "a girl holding a red balloon above a white dog, " + _TAIL_A + ", " + _TAIL_C,
          "girl, balloon, dog", "red -> balloon; white -> dog", "balloon / above / dog"),
    _case("long", "a cozy cabin with a red door next to a tall pine tree, snow on the roof, " + _TAIL_B + ", "
          + _TAIL_A, "cabin, door, pine tree, snow, roof", "cozy -> cabin; red -> door; tall -> pine tree",
          "cabin / near / pine tree"),
    _case("long", "a white horse and a black horse in a meadow, " + _TAIL_C + ", " + _TAIL_B,
          "horse, horse#2, meadow", "white -> horse; black -> horse#2"),
    _case("long", "a robot made of copper and glass standing next to a little girl, " + _TAIL_A + ", " + _TAIL_B,
          "robot, girl", "little -> girl", "robot / near / girl"),
    # ------------------------------------------------------------------ emphasis and embedding syntax
    _case("emphasis", "a (red:1.2) crown and a (golden:1.3) strawberry", "crown, strawberry",
          "red -> crown; golden -> strawberry"),
    _case("emphasis", "(masterpiece:1.2), (best quality), a cat on a (blue:1.1) pillow", "cat, pillow",
          "blue -> pillow"),
    _case("emphasis", "embedding:easynegative, a dog in a field", "dog, field"),
    _case("emphasis", "a ((fluffy)) dog next to a (small:0.8) cat", "dog, cat", "fluffy -> dog; small -> cat",
          "dog / near / cat"),
    _case("emphasis", "(a cat:1.2) to the left of (a dog:1.1)", "cat, dog", relations="cat / left / dog"),
    _case("emphasis", "a portrait of a (wizard:1.3) with a (long white beard:1.2), embedding:badhandv4",
          "wizard, beard", "long, white -> beard"),
    _case("emphasis", "(a red car:1.4) above (a blue bus)", "car, bus", "red -> car; blue -> bus",
          "car / above / bus"),
    _case("emphasis", "a \\(cat\\) sitting on a mat", "cat, mat"),
    _case("emphasis", "(photorealistic:1.4), a green frog on a lily pad, (bokeh:0.8)", "frog, lily pad",
          "green -> frog"),
    _case("emphasis", "a lamp (next to:1.2) a sofa", "lamp, sofa", relations="lamp / near / sofa"),
    _case("emphasis", "(embedding:goodhands:1.0) a woman waving, (8k:1.1)", "woman"),
    _case("emphasis", "a (white:1.3) horse (above:1.1) a (black:1.3) horse", "horse, horse#2",
          "white -> horse; black -> horse#2", "horse / above / horse#2"),
    _case("emphasis", "(((a tiny mouse))) beside (((a huge elephant)))", "mouse, elephant",
          "tiny -> mouse; huge -> elephant", "mouse / near / elephant"),
    _case("emphasis", "a cup of tea,(wooden table:1.1),masterpiece", "cup, tea, table", "wooden -> table"),
    _case("emphasis", "a (bird:1.2) (above:1.0) a (tree:1.2), embedding:easynegative", "bird, tree",
          relations="bird / above / tree"),
    # ------------------------------------------------------------------ negation
    _case("negation", "a cat but no dog", "cat", note="negat"),
    _case("negation", "a cat that is not to the left of a dog", "cat, dog", note="negat"),
    _case("negation", "a room without any furniture", "room", note="negat"),
    _case("negation", "a street with no cars", "street", note="negat"),
    _case("negation", "a beach, no people", "beach", note="negat"),
    _case("negation", "a cake without candles", "cake", note="negat"),
    _case("negation", "a cat, not a dog", "cat", note="negat"),
    _case("negation", "a bowl of apples and no bananas", "bowl, apples", note="negat"),
    _case("negation", "a dog that is not above a cat", "dog, cat", note="negat"),
    _case("negation", "a parking lot with no cars", "parking lot", note="negat"),
    # ------------------------------------------------------------------ relations
    _case("relations", "a cat and a dog to the left of a bird", "cat, dog, bird",
          relations="cat / left / bird; dog / left / bird"),
    _case("relations", "a cat and a dog above a bird", "cat, dog, bird", relations="cat / above / bird; dog / above / bird"),
    _case("relations", "a cat to the left of a dog and a bird", "cat, dog, bird",
          relations="cat / left / dog; cat / left / bird"),
    _case("relations", "a red ball and a blue cube below a green cone", "ball, cube, cone",
          "red -> ball; blue -> cube; green -> cone", "ball / below / cone; cube / below / cone"),
    _case("relations", "an apple and a pear next to a banana", "apple, pear, banana",
          relations="apple / near / banana; pear / near / banana"),
    _case("relations", "a lamp above a table and a chair", "lamp, table, chair",
          relations="lamp / above / table; lamp / above / chair"),
    _case("relations", "a girl holding a red balloon above a white dog", "girl, balloon, dog",
          "red -> balloon; white -> dog", "balloon / above / dog"),
    _case("relations", "a man holding an umbrella above his head", "man, umbrella, head",
          relations="umbrella / above / head"),
    _case("relations", "a woman carrying a basket on top of her head", "woman, basket, head",
          relations="basket / above / head"),
    _case("relations", "a chef putting a pie next to a cake", "chef, pie, cake", relations="pie / near / cake"),
    _case("relations", "a man sitting to the left of a woman", "man, woman", relations="man / left / woman"),
    _case("relations", "a dog sleeping under a table", "dog, table", relations="dog / below / table"),
    _case("relations", "a red car on the left and a blue bus on the right", "car, bus", "red -> car; blue -> bus",
          "car / left / bus"),
    _case("relations", "on the left a cat, on the right a dog", "cat, dog", relations="cat / left / dog"),
    _case("relations", "a cat on the left side and a dog on the right side", "cat, dog", relations="cat / left / dog"),
    _case("relations", "a tree on the left, a house on the right", "tree, house", relations="tree / left / house"),
    _case("relations", "a cup on the right and a plate on the left", "cup, plate", relations="cup / right / plate"),
    _case("relations", "on the left side a horse and on the right side a cow", "horse, cow",
          relations="horse / left / cow"),
    _case("relations", "a mouse on the right side of a keyboard", "mouse, keyboard", relations="mouse / right / keyboard"),
    _case("relations", "a laptop on top of a desk", "laptop, desk", relations="laptop / above / desk"),
    _case("relations", "a dog in front of a car", "dog, car", note="depth"),
    _case("relations", "a man standing behind a tree", "man, tree", note="depth"),
    _case("relations", "a cat in front of a dog and to the left of a bird", "cat, dog, bird",
          relations="cat / left / bird", note="depth"),
    _case("relations", "a cat... to the left of a dog", "cat, dog", relations="cat / left / dog"),
    _case("relations", "a cat to the left of a dog...", "cat, dog", relations="cat / left / dog"),
    _case("relations", "a bird... above a tree...", "bird, tree", relations="bird / above / tree"),
    _case("relations", "a dog to the right of a cat", "dog, cat", relations="dog / right / cat"),
    _case("relations", "a cat left of a dog left of a bird", "cat, dog, bird",
          relations="cat / left / dog; dog / left / bird"),
    _case("relations", "a bird above a tree", "bird, tree", relations="bird / above / tree"),
    _case("relations", "a laptop and a bright stopwatch", "laptop, stopwatch", "bright -> stopwatch"),
    _case("relations", "a ball below a box", "ball, box", relations="ball / below / box"),
    _case("relations", "a vase near a window", "vase, window", relations="vase / near / window"),
    _case("relations", "a red apple on the left of a green pear", "apple, pear", "red -> apple; green -> pear",
          "apple / left / pear"),
    _case("relations", "a fox beneath a tall pine tree", "fox, pine tree", "tall -> pine tree",
          "fox / below / pine tree"),
    _case("relations", "a cat is to the left of a dog", "cat, dog", relations="cat / left / dog"),
    _case("relations", "a photo of a cat to the left of a dog", "cat, dog", relations="cat / left / dog"),
    _case("relations", "a cat to the left of a dog, masterpiece, best quality, 8k", "cat, dog",
          relations="cat / left / dog"),
    _case("relations", "a blue cube on top of a red sphere", "cube, sphere", "blue -> cube; red -> sphere",
          "cube / above / sphere"),
    _case("relations", "a sheep next to a cow and a pig", "sheep, cow, pig", relations="sheep / near / cow; sheep / near / pig"),
    _case("relations", "a bench under a tree, a bicycle next to the bench", "bench, tree, bicycle",
          relations="bench / below / tree; bicycle / near / bench"),
    # ------------------------------------------------------------------ parser slips
    _case("slips", "a striped shirt and plaid pants", "shirt, pants", "striped -> shirt; plaid -> pants"),
    _case("slips", "a backpack near a fire hydrant", "backpack, fire hydrant", relations="backpack / near / fire hydrant"),
    _case("slips", "a teddy bear and a toy car", "teddy bear, toy car"),
    _case("slips", "a coffee mug next to a laptop", "coffee mug, laptop", relations="coffee mug / near / laptop"),
    _case("slips", "a traffic light above a stop sign", "traffic light, stop sign",
          relations="traffic light / above / stop sign"),
    _case("slips", "a floral dress and a leather jacket", "dress, jacket", "floral -> dress; leather -> jacket"),
    _case("slips", "a cream sofa and a marble table", "sofa, table", "cream -> sofa; marble -> table"),
    _case("slips", "a red teddy bear", "teddy bear", "red -> teddy bear"),
    _case("slips", "a tennis ball and a baseball bat", "tennis ball, baseball bat"),
    _case("slips", "a checkered flag and a wooden boat", "flag, boat", "checkered -> flag; wooden -> boat"),
    _case("slips", "a denim jacket with brass buttons", "jacket, buttons", "denim -> jacket; brass -> buttons"),
    _case("slips", "a fire truck next to a fire station", "fire truck, fire station",
          relations="fire truck / near / fire station"),
    _case("slips", "a golden crown on a velvet pillow", "crown, pillow", "golden -> crown; velvet -> pillow"),
    # ------------------------------------------------------------------ not English
    _case("non_english", "un gato rojo y un perro azul", note="English"),
    _case("non_english", "eine rote Katze neben einem blauen Hund", note="English"),
    _case("non_english", "un chat noir à gauche d'un chien blanc", note="English"),
    _case("non_english", "一只红色的猫和一只蓝色的狗", note="English"),
    _case("non_english", "кошка слева от собаки", note="English"),
    _case("non_english", "un gatto bianco sopra un tavolo", note="English"),
    _case("non_english", "ein Hund und eine Katze im Garten", note="English"),
    _case("non_english", "una mujer con un vestido rojo", note="English"),
    # ------------------------------------------------------------------ held out: written after the fixes,
    # before running them, to see whether the rules carry beyond the prompts they were made on
    _case("holdout", "a yellow taxi on a busy street, rainy night, cinematic lighting, 35mm film",
          "taxi, street", "yellow -> taxi; busy -> street"),
    _case("holdout", "a brown dog and a gray cat sleeping on a rug, cozy, warm light, 4k", "dog, cat, rug",
          "brown -> dog; gray -> cat"),
    _case("holdout", "an owl perched on a branch above a small pond, by beatrix potter, watercolor",
          "owl, branch, pond", "small -> pond", "branch / above / pond"),
    _case("holdout", "a boy holding a kite above his head", "boy, kite, head", relations="kite / above / head"),
    _case("holdout", "a woman placing a vase next to a lamp", "woman, vase, lamp", relations="vase / near / lamp"),
    _case("holdout", "a red bicycle and a blue scooter next to a bench", "bicycle, scooter, bench",
          "red -> bicycle; blue -> scooter", "bicycle / near / bench; scooter / near / bench"),
    _case("holdout", "a candle to the right of a book and a mug", "candle, book, mug",
          relations="candle / right / book; candle / right / mug"),
    _case("holdout", "a snowman on the left and a reindeer on the right, christmas card, festive",
          "snowman, reindeer", relations="snowman / left / reindeer"),
    _case("holdout", "on the right a tall tower, on the left a small house", "tower, house",
          "tall -> tower; small -> house", "house / left / tower"),
    _case("holdout", "a kitchen with no windows", "kitchen", note="negat"),
    _case("holdout", "a forest path without people, morning fog", "forest path", note="negat"),
    _case("holdout", "a cat that is not below a table", "cat, table", note="negat"),
    _case("holdout", "a dog behind a fence", "dog, fence", note="depth"),
    _case("holdout", "a girl in front of a mirror", "girl, mirror", note="depth"),
    _case("holdout", "a spoon... to the right of a fork", "spoon, fork", relations="spoon / right / fork"),
    _case("holdout", "a (golden:1.2) retriever (beside:1.1) a (white:1.2) fence, embedding:negative_hand",
          "retriever, fence", "golden -> retriever; white -> fence", "retriever / near / fence"),
    _case("holdout", "((best quality)), (a wooden chair:1.3) under (a hanging lamp:1.1)", "chair, lamp",
          "wooden -> chair; hanging -> lamp", "chair / below / lamp"),
    _case("holdout", "a polka dot umbrella and a striped scarf", "umbrella, scarf", "striped -> scarf"),
    _case("holdout", "a mailbox near a street lamp", "mailbox, street lamp", relations="mailbox / near / street lamp"),
    _case("holdout", "a silk scarf and velvet gloves", "scarf, gloves", "silk -> scarf; velvet -> gloves"),
    _case("holdout", "a green parrot sitting on a wooden perch", "parrot, perch", "green -> parrot; wooden -> perch"),
    _case("holdout", "three oranges in a white bowl, still life photography, soft shadows", "oranges, bowl",
          "white -> bowl"),
    _case("holdout", "a lion resting under an acacia tree, national geographic, golden hour, telephoto",
          "lion, acacia tree", relations="lion / below / acacia tree"),
    _case("holdout", "un perro negro junto a un gato blanco", note="English"),
    _case("holdout", "ein kleines Haus am See", note="English"),
    _case("holdout", "a pirate ship sailing on a stormy ocean, dramatic sky, oil painting, highly detailed",
          "pirate ship, ocean, sky", "stormy -> ocean; dramatic -> sky"),
    _case("holdout", "a squirrel eating a nut on a tree stump", "squirrel, nut, tree stump"),
    _case("holdout", "a man and a woman walking a dog", "man, woman, dog"),
)

_MIRROR = {"right": "left", "below": "above"}
FIELDS = ("objects", "bindings", "relations", "no_false_relations", "notes", "all")


def canonical(relations) -> frozenset:
    """Relations as a set of ``(subject, relation, object)`` with right/below written as left/above and
    ``near`` unordered."""
    out = set()
    for s, r, o in relations:
        if r in _MIRROR:
            s, r, o = o, _MIRROR[r], s
        if r == "near":
            s, o = sorted((s, o))
        out.add((s, r, o))
    return frozenset(out)


def found_of(analysis) -> dict:
    """What an analysis found, in the corpus' terms."""
    return {
        "objects": sorted(e.name for e in analysis.entities),
        "bindings": sorted((b.noun.name, tuple(sorted(m.name for m in b.modifiers))) for b in analysis.bindings),
        "relations": canonical((r.subject.name, r.relation, r.object.name) for r in analysis.relations),
        "notes": analysis.notes,
    }


def judge(case: Case, found: dict) -> dict:
    """Per-field exact match of one case, and the relations found that were not expected."""
    expected_rels = canonical(case.relations)
    false = found["relations"] - expected_rels
    row = {
        "objects": found["objects"] == sorted(case.objects),
        "bindings": found["bindings"] == list(case.bindings),
        "relations": found["relations"] == expected_rels,
        "no_false_relations": not false,
        "notes": not case.note or any(case.note.lower() in n.lower() for n in found["notes"]),
        "false": sorted(false),
    }
    row["all"] = all(row[f] for f in FIELDS[:-1])
    return row


def score(analyze, cases=CORPUS) -> tuple[dict, list]:
    """``analyze(prompt) -> PromptAnalysis`` on every case: ``({category: {field: rate, "n": count,
    "false_relations": count}}, per-case rows)``; the category ``"ALL"`` is the whole corpus."""
    rows = []
    for case in cases:
        found = found_of(analyze(case.prompt))
        rows.append((case, found, judge(case, found)))
    table: dict = defaultdict(lambda: defaultdict(float))
    for case, _, row in rows:
        for cat in (case.category, "ALL"):
            table[cat]["n"] += 1
            table[cat]["false_relations"] += len(row["false"])
            for f in FIELDS:
                table[cat][f] += row[f]
    for cat in table.values():
        for f in FIELDS:
            cat[f] /= cat["n"]
    return {k: dict(v) for k, v in table.items()}, rows
