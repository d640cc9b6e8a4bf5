"""Write the UI-format example workflows in example_workflows/ (run after changing a node's inputs).

    python -m scripts.build_example_workflows        # from the repository root, in the test environment

The files are what the ComfyUI frontend saves and loads (nodes, links, widgets_values in the order
of each node's widget inputs). tests/workflows executes every one of them through the host.

STORM nodes get their widget values by name (``{input: value}``), put in the order of the node
class's real ``INPUT_TYPES`` (the pack is imported as the tests import it); an input not given takes
its declared default, so the examples show the nodes' current defaults. Core ComfyUI nodes keep
positional values: their widget order is fixed by the saved workflows that depend on it, and
listing them here keeps the files independent of the host version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from harness.host import load_pack
from harness.workflows import EXAMPLES as FILE_STEMS
from harness.workflows import EXAMPLES_DIR, widgets_values

OUT = EXAMPLES_DIR


class Graph:
    """A tiny builder for UI-format workflows.

    ``node_defs`` maps a node type to its ``INPUT_TYPES()``; a node whose widgets are given as a
    mapping gets its ``widgets_values`` from it (see :func:`harness.workflows.widgets_values`).
    """

    def __init__(self, node_defs: Mapping[str, Mapping]) -> None:
        self.node_defs = node_defs
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def node(self, type_: str, pos, size, widgets, inputs=(), outputs=(), title=None) -> dict:
        if isinstance(widgets, Mapping):
            widgets = widgets_values(self.node_defs[type_], widgets)
        node = {"id": len(self.nodes) + 1, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0,
                "inputs": [{"name": name, "type": t, "link": None, **({"widget": {"name": name}} if widget else {})}
                           for name, t, *widget in inputs],
                "outputs": [{"name": name, "type": t, "links": [], "slot_index": i}
                            for i, (name, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def link(self, src: dict, src_slot: int, dst: dict, dst_slot: int) -> None:
        link_id = len(self.links) + 1
        self.links.append([link_id, src["id"], src_slot, dst["id"], dst_slot, src["outputs"][src_slot]["type"]])
        src["outputs"][src_slot]["links"].append(link_id)
        dst["inputs"][dst_slot]["link"] = link_id

    def note(self, pos, size, text: str) -> None:
        self.nodes.append({"id": len(self.nodes) + 1, "type": "Note", "pos": list(pos), "size": list(size),
                           "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [],
                           "properties": {}, "widgets_values": [text], "color": "#432", "bgcolor": "#653"})

    def save(self, key: str, out: Path) -> None:
        """Write the workflow as ``out/<its file stem>.json`` (the stem of ``key`` in :data:`FILE_STEMS`)."""
        workflow = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                    "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
                    "version": 0.4}
        (out / f"{FILE_STEMS[key]}.json").write_text(json.dumps(workflow, indent=2) + "\n")


# ------------------------------------------------------------------------------- shared parts
def checkpoint(g: Graph, ckpt="v1-5-pruned-emaonly.safetensors") -> dict:
    return g.node("CheckpointLoaderSimple", (20, 160), (320, 100), [ckpt],
                  outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])


def negative(g: Graph, ckpt: dict, pos=(380, 440)) -> dict:
    node = g.node("CLIPTextEncode", pos, (400, 130), ["blurry, low quality, deformed"], inputs=[("clip", "CLIP")],
                  outputs=[("CONDITIONING", "CONDITIONING")], title="CLIP Text Encode (negative prompt)")
    g.link(ckpt, 1, node, 0)
    return node


def empty_latent(g: Graph, pos=(380, 620), size=512) -> dict:
    return g.node("EmptyLatentImage", pos, (320, 110), [size, size, 1], outputs=[("LATENT", "LATENT")])


def guided_ksampler(g: Graph, pos, sources=(), seed=42, **widgets) -> dict:
    """STORM Guided KSampler, its inputs (model, guidance, positive, negative, latent_image) linked from ``sources``
    (``(node, output slot)`` each, in that order)."""
    ks = g.node("STORM_GuidedKSampler", pos, (340, 330), {"seed": seed, **widgets},
                inputs=[("model", "MODEL"), ("guidance", "STORM_GUIDANCE"), ("positive", "CONDITIONING"),
                        ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
                outputs=[("latent", "LATENT"), ("attention", "STORM_ATTENTION")])
    for slot, src in enumerate(sources):
        g.link(*src, ks, slot)
    return ks


def decode_save_heatmaps(g: Graph, ckpt: dict, latent_src: tuple[dict, int], attention_src: tuple[dict, int],
                         tokens_src: tuple[dict, int], x: int, prefix: str, show="subjects", vae_slot: int = 2) -> None:
    """Decode with ``ckpt``'s VAE output ``vae_slot`` (a checkpoint's VAE, or a VAE loader's slot 0), save the image,
    and the heatmaps of ``attention_src`` over it."""
    dec = g.node("VAEDecode", (x, 120), (210, 50), [], inputs=[("samples", "LATENT"), ("vae", "VAE")],
                 outputs=[("IMAGE", "IMAGE")])
    g.link(*latent_src, dec, 0)
    g.link(ckpt, vae_slot, dec, 1)
    save = g.node("SaveImage", (x + 250, 60), (420, 460), [f"storm/{prefix}"], inputs=[("images", "IMAGE")])
    g.link(dec, 0, save, 0)
    heat = g.node("STORM_AttentionHeatmap", (x, 560), (400, 560), {"show": show},
                  inputs=[("attention", "STORM_ATTENTION"), ("latent", "LATENT"), ("tokens", "STORM_TOKENS"),
                          ("image", "IMAGE")],
                  outputs=[("grid", "IMAGE"), ("overlay", "IMAGE"), ("mask", "MASK"), ("log", "STRING")])
    g.link(*attention_src, heat, 0)
    g.link(*latent_src, heat, 1)
    g.link(*tokens_src, heat, 2)
    g.link(dec, 0, heat, 3)
    save_h = g.node("SaveImage", (x + 450, 560), (420, 300), [f"storm/{prefix}_heatmaps"], inputs=[("images", "IMAGE")])
    g.link(heat, 0, save_h, 0)
    preview = g.node("PreviewImage", (x + 450, 900), (420, 300), [], inputs=[("images", "IMAGE")],
                     title="Heatmap overlays")
    g.link(heat, 1, preview, 0)


def dit_latent(g: Graph, pos=(380, 620), size=1024) -> dict:
    return g.node("EmptySD3LatentImage", pos, (320, 110), [size, size, 1], outputs=[("LATENT", "LATENT")])


def prompt_analysis(g: Graph, clip_src: tuple[dict, int], text: str) -> dict:
    """STORM Prompt Analysis of the positive prompt ``text``, its CLIP from ``clip_src`` (node, output slot)."""
    ana = g.node("STORM_PromptAnalysis", (380, 40), (420, 510), {"text": text}, inputs=[("clip", "CLIP")],
                 outputs=[("analysis", "STORM_ANALYSIS"), ("tokens", "STORM_TOKENS"), ("conditioning", "CONDITIONING"),
                          ("text", "STRING")], title="STORM Prompt Analysis (positive prompt)")
    g.link(*clip_src, ana, 0)
    return ana


def spatial_transport(g: Graph, ana: dict) -> dict:
    """STORM Spatial Transport (paper mode, the released defaults) on Prompt Analysis ``ana``'s relations."""
    sto = g.node("STORM_SpatialTransport", (850, 40), (380, 330), {"mode": "paper"},
                 inputs=[("analysis", "STORM_ANALYSIS"), ("guidance", "STORM_GUIDANCE"), ("masks", "MASK")],
                 outputs=[("guidance", "STORM_GUIDANCE")])
    g.link(ana, 0, sto, 0)
    return sto


def empty_prompt(g: Graph, clip: dict, pos, title: str) -> dict:
    """The empty prompt encoded by a CLIP loader ``clip`` (a DiT's negative)."""
    neg = g.node("CLIPTextEncode", pos, (400, 130), [""], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")], title=title)
    g.link(clip, 0, neg, 0)
    return neg


def subject_tokens(g: Graph, ckpt: dict, text: str, subjects: str) -> dict:
    tok = g.node("STORM_SubjectTokens", (380, 60), (400, 330), {"text": text, "subjects": subjects},
                 inputs=[("clip", "CLIP")],
                 outputs=[("tokens", "STORM_TOKENS"), ("conditioning", "CONDITIONING"), ("tokenization", "STRING")],
                 title="STORM Subject Tokens (positive prompt)")
    g.link(ckpt, 1, tok, 0)
    return tok


def attend_excite_graph(g: Graph, ckpt: dict, latent, prefix: str, **sampler) -> None:
    """Subject Tokens -> Attend-and-Excite (the paper's defaults) -> Guided KSampler (``sampler`` widgets) ->
    decoded image and heatmaps; ``latent(g)`` adds the empty latent."""
    tok = subject_tokens(g, ckpt, "a cat and a dog", "cat, dog")
    neg = negative(g, ckpt)
    lat = latent(g)
    ae = g.node("STORM_AttendAndExcite", (830, 40), (360, 330), {},
                inputs=[("tokens", "STORM_TOKENS"), ("guidance", "STORM_GUIDANCE")], outputs=[("guidance", "STORM_GUIDANCE")])
    g.link(tok, 0, ae, 0)
    ks = guided_ksampler(g, (1240, 120), [(ckpt, 0), (ae, 0), (tok, 1), (neg, 0), (lat, 0)], **sampler)
    decode_save_heatmaps(g, ckpt, (ks, 0), (ks, 1), (tok, 0), 1630, prefix)


# --------------------------------------------------------------------------------- workflows
def attend_and_excite(defs: Mapping[str, Mapping], out: Path) -> None:
    g = Graph(defs)
    ckpt = checkpoint(g)
    attend_excite_graph(g, ckpt, empty_latent, "attend_and_excite")
    g.note((20, 330), (330, 260),
           "Attend-and-Excite (Chefer et al. 2023) with ComfyUI-STORM.\n\n"
           "1. Write the prompt in 'STORM Subject Tokens' and list its subject words (e.g. 'cat, dog').\n"
           "2. The guided sampler excites the most neglected subject on the first half of the steps.\n"
           "3. 'STORM Attention Heatmap' shows each subject's attention for this very run and the loss log.\n\n"
           "Defaults are the paper's: 50 steps, cfg 7.5, step size 20, thresholds 0.05/0.5/0.8 at steps 0/10/20.")
    g.save("attend_and_excite", out)


def syngen(defs: Mapping[str, Mapping], out: Path) -> None:
    g = Graph(defs)
    ckpt = checkpoint(g)
    ana = prompt_analysis(g, (ckpt, 1), "a red crown and a golden strawberry")
    neg = negative(g, ckpt, pos=(380, 610))
    lat = empty_latent(g, pos=(380, 790))
    sg = g.node("STORM_SynGen", (850, 40), (360, 260), {},  # the paper's defaults
                inputs=[("analysis", "STORM_ANALYSIS"), ("guidance", "STORM_GUIDANCE")],
                outputs=[("guidance", "STORM_GUIDANCE")])
    g.link(ana, 0, sg, 0)
    ks = guided_ksampler(g, (1260, 120), [(ckpt, 0), (sg, 0), (ana, 2), (neg, 0), (lat, 0)], seed=1924)
    decode_save_heatmaps(g, ckpt, (ks, 0), (ks, 1), (ana, 1), 1650, "syngen", show="all words")
    g.note((20, 330), (330, 280),
           "SynGen (Rassin et al. 2023): binds each modifier to its noun.\n\n"
           "'STORM Prompt Analysis' parses the prompt with spaCy (red -> crown, golden -> strawberry) and shows "
           "what it found; override it in its 'bindings' field if needed.\n"
           "Paper defaults: constant step 20 on the first 25 of 50 steps. The entropy variant is in the SynGen "
           "node's optional inputs.")
    g.save("syngen", out)


def astar(defs: Mapping[str, Mapping], out: Path) -> None:
    g = Graph(defs)
    ckpt = checkpoint(g)
    tok = g.node("STORM_SubjectTokens", (380, 60), (400, 330), {"text": "a cat and a bird", "subjects": "cat, bird"},
                 inputs=[("clip", "CLIP")],
                 outputs=[("tokens", "STORM_TOKENS"), ("conditioning", "CONDITIONING"), ("tokenization", "STRING")],
                 title="STORM Subject Tokens (positive prompt)")
    g.link(ckpt, 1, tok, 0)
    neg = negative(g, ckpt)
    lat = empty_latent(g)
    ast = g.node("STORM_AStar", (830, 40), (360, 330), {},  # our defaults (the paper gives none)
                 inputs=[("tokens", "STORM_TOKENS"), ("guidance", "STORM_GUIDANCE"), ("masks", "MASK")],
                 outputs=[("guidance", "STORM_GUIDANCE")])
    g.link(tok, 0, ast, 0)
    smp = g.node("STORM_GuidedSampler", (830, 420), (360, 110), {},
                 inputs=[("guidance", "STORM_GUIDANCE")], outputs=[("sampler", "SAMPLER"), ("attention", "STORM_ATTENTION")])
    g.link(ast, 0, smp, 0)
    sch = g.node("BasicScheduler", (830, 580), (320, 110), ["normal", 50, 1.0], inputs=[("model", "MODEL")],
                 outputs=[("SIGMAS", "SIGMAS")])
    g.link(ckpt, 0, sch, 0)
    sc = g.node("SamplerCustom", (1240, 120), (340, 440), [True, 42, "fixed", 7.5],
                inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                        ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
                outputs=[("output", "LATENT"), ("denoised_output", "LATENT")])
    for slot, src in enumerate([(ckpt, 0), (tok, 1), (neg, 0), (smp, 0), (sch, 0), (lat, 0)]):
        g.link(*src, sc, slot)
    decode_save_heatmaps(g, ckpt, (sc, 0), (smp, 1), (tok, 0), 1630, "astar")
    g.note((20, 330), (330, 300),
           "A-STAR (Agarwal et al. 2023): keeps the subjects' attention apart (segregation) and stable "
           "across steps (retention), with the core SamplerCustom and the STORM Guided Sampler.\n\n"
           "Optional: connect a MASK batch (one per subject, see mask_subjects) to place the subjects.\n"
           "The paper leaves step sizes and thresholds open: the defaults are ours (A&E-style).")
    g.save("astar", out)


def storm_spatial(defs: Mapping[str, Mapping], out: Path) -> None:
    g = Graph(defs)
    ckpt = checkpoint(g)
    ana = prompt_analysis(g, (ckpt, 1), "a cat to the left of a dog")
    neg = negative(g, ckpt, pos=(380, 610))
    lat = empty_latent(g, pos=(380, 790))
    sto = spatial_transport(g, ana)
    ks = guided_ksampler(g, (1280, 120), [(ckpt, 0), (sto, 0), (ana, 2), (neg, 0), (lat, 0)])
    decode_save_heatmaps(g, ckpt, (ks, 0), (ks, 1), (ana, 1), 1670, "storm_spatial")
    g.note((20, 330), (330, 300),
           "STORM (Han et al., CVPR 2025): puts objects where the prompt says.\n\n"
           "'STORM Prompt Analysis' finds the relation (cat left of dog) in the dependency parse; override it "
           "in its 'relations' field ('cat left of dog; bird above cat').\n"
           "Optional: paint where an object goes (a MASK into 'masks', named in 'mask_subjects').\n"
           "mode 'reference' reproduces the released code's loss for comparison.")
    g.save("storm_spatial", out)


def clip_encode(g: Graph, ckpt: dict, text: str, pos, title: str) -> dict:
    node = g.node("CLIPTextEncode", pos, (400, 130), [text], inputs=[("clip", "CLIP")],
                  outputs=[("CONDITIONING", "CONDITIONING")], title=title)
    g.link(ckpt, 1, node, 0)
    return node


def interpolation_node(g: Graph, pos, frames: int, with_guide: bool, starts: bool = False, **widgets) -> dict:
    inputs = [("model", "MODEL"), ("positive_a", "CONDITIONING"), ("positive_b", "CONDITIONING"),
              ("negative", "CONDITIONING"), ("latent_image", "LATENT"), ("guide", "CONDITIONING")] + \
        ([("start_a", "LATENT"), ("start_b", "LATENT")] if starts else [])
    return g.node("STORM_AttentionInterpolation", pos, (380, 480),
                  {"frames": frames, "seed": 1002, **widgets},  # AID's official settings
                  inputs=inputs, outputs=[("frames", "LATENT"), ("attention", "STORM_ATTENTION"),
                                          ("coefficients", "STRING")],
                  title="STORM Attention Interpolation (PAID)" if with_guide else "STORM Attention Interpolation (AID)")


def morph_prompts(g: Graph) -> tuple[dict, dict, dict, dict, dict]:
    """The checkpoint, prompts A (cat) and B (dog), the negative prompt and the empty latent of the prompt morphs."""
    ckpt = checkpoint(g)
    a = clip_encode(g, ckpt, "a photo of a cat", (380, 20), "Prompt A (first frame)")
    b = clip_encode(g, ckpt, "a photo of a dog", (380, 190), "Prompt B (last frame)")
    neg = negative(g, ckpt, pos=(380, 360))
    lat = empty_latent(g, pos=(380, 540))
    return ckpt, a, b, neg, lat


def save_sequence(g: Graph, src: dict, slot: int, x: int, name: str, fps: float) -> None:
    """Save a sequence of frames (IMAGE output ``slot`` of ``src``) as an animated WEBP and as single images."""
    anim = g.node("SaveAnimatedWEBP", (x, 60), (420, 460), [f"storm/{name}", fps, False, 90, "default"],
                  inputs=[("images", "IMAGE")])
    g.link(src, slot, anim, 0)
    frames = g.node("SaveImage", (x, 560), (420, 300), [f"storm/{name}_frames"], inputs=[("images", "IMAGE")])
    g.link(src, slot, frames, 0)


def decode_sequence(g: Graph, ckpt: dict, src: dict, x: int, name: str, fps: float = 6.0) -> None:
    """Decode the frames (LATENT output 0 of ``src``) with the checkpoint's VAE at ``x`` and save them
    (:func:`save_sequence`) beside it."""
    dec = g.node("VAEDecode", (x, 60), (210, 50), [], inputs=[("samples", "LATENT"), ("vae", "VAE")],
                 outputs=[("IMAGE", "IMAGE")])
    g.link(src, 0, dec, 0)
    g.link(ckpt, 2, dec, 1)
    save_sequence(g, dec, 0, x + 250, name, fps)


def aid_morph(defs: Mapping[str, Mapping], out: Path) -> None:
    g = Graph(defs)
    ckpt, a, b, neg, lat = morph_prompts(g)
    aid = interpolation_node(g, (840, 60), 9, with_guide=False)
    for slot, src in enumerate([(ckpt, 0), (a, 0), (b, 0), (neg, 0), (lat, 0)]):
        g.link(*src, aid, slot)
    decode_sequence(g, ckpt, aid, 1270, "aid_morph")
    g.note((20, 330), (330, 300),
           "AID (He et al., NeurIPS 2024): a morph from prompt A to prompt B made by interpolating inside the "
           "attention layers, not the text embeddings.\n\n"
           "Frames follow a Beta(3, 3) schedule; attention is interpolated on the first half of the steps "
           "(warmup_ratio), then each frame finishes on its own. The first and last frames are exactly the plain "
           "generations of A and B. Long sequences run in chunks (chunk_size) to bound memory.")
    g.save("aid_morph", out)


def aid_dynamic_morph(defs: Mapping[str, Mapping], out: Path) -> None:
    g = Graph(defs)
    ckpt, a, b, neg, lat = morph_prompts(g)
    inputs = [("model", "MODEL"), ("positive_a", "CONDITIONING"), ("positive_b", "CONDITIONING"),
              ("negative", "CONDITIONING"), ("latent_image", "LATENT"), ("vae", "VAE"), ("guide", "CONDITIONING"),
              ("start_a", "LATENT"), ("start_b", "LATENT"), ("clip_vision", "CLIP_VISION")]
    # the release's notebooks: 5 frames kept from 1.5-2x as many explored
    aid = g.node("STORM_DynamicInterpolation", (840, 60), (380, 520),
                 {"seed": 1002, "exploration_size": 9, "interpolation_size": 5}, inputs=inputs,
                 outputs=[("frames", "LATENT"), ("images", "IMAGE"), ("coefficients", "STRING"), ("report", "STRING")])
    for slot, src in enumerate([(ckpt, 0), (a, 0), (b, 0), (neg, 0), (lat, 0), (ckpt, 2)]):
        g.link(*src, aid, slot)
    save_sequence(g, aid, 1, 1270, "aid_dynamic", 4.0)
    g.note((20, 330), (330, 420),
           "AID's dynamic selection (He et al., NeurIPS 2024, 'to further improve smoothness'): instead of a fixed "
           "Beta schedule, frames are generated one at a time where the morph changes most (between the two "
           "neighbouring frames that differ most, placed by a Beta prior refitted to the measured differences), "
           "and the explored frames whose adjacent differences are most even are kept.\n\n"
           "The node's report gives smoothness (1 - Gini of the adjacent differences, higher is smoother) and "
           "consistency (their mean) of the kept and the explored frames.\n\n"
           "Connect Load CLIP Vision to clip_vision to measure differences with CLIP image embeddings, as the "
           "release does; without it the decoded frames at 64 x 64 px are compared.")
    g.save("aid_dynamic_morph", out)


def inverted_picture(g: Graph, ckpt: dict, prompt: dict, name: str, label: str, y: int) -> dict:
    """Load Image -> Image Scale (the frame size) -> VAE Encode -> SamplerCustom with its noise off, cfg 1, over
    FlipSigmas of the interpolation's scheduler: the latent a sampler starts from to end at the picture (ComfyUI's
    inversion graph); the SamplerCustom node (its output 0 is that latent)."""
    image = g.node("LoadImage", (380, y), (320, 320), [name, "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
                   title=f"Picture {label}")
    scale = g.node("ImageScale", (740, y), (320, 130), ["lanczos", 512, 512, "center"],
                   inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")], title="Image Scale (the frame size)")
    g.link(image, 0, scale, 0)
    encode = g.node("VAEEncode", (740, y + 170), (210, 50), [], inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                    outputs=[("LATENT", "LATENT")])
    g.link(scale, 0, encode, 0)
    g.link(ckpt, 2, encode, 1)
    select = g.node("KSamplerSelect", (740, y + 260), (320, 60), ["euler"],
                    outputs=[("SAMPLER", "SAMPLER")])
    steps = g.node_defs["STORM_AttentionInterpolation"]["required"]["steps"][1]["default"]  # the interpolation's
    schedule = g.node("BasicScheduler", (740, y + 370), (320, 110), ["normal", steps, 1.0],
                      inputs=[("model", "MODEL")], outputs=[("SIGMAS", "SIGMAS")])
    g.link(ckpt, 0, schedule, 0)
    flip = g.node("FlipSigmas", (740, y + 530), (210, 30), [], inputs=[("sigmas", "SIGMAS")],
                  outputs=[("SIGMAS", "SIGMAS")])
    g.link(schedule, 0, flip, 0)
    invert = g.node("SamplerCustom", (1100, y), (320, 200), [False, 0, "fixed", 1.0],
                    inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                            ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
                    outputs=[("output", "LATENT"), ("denoised_output", "LATENT")],
                    title=f"Invert picture {label.split()[0]} (noise off, cfg 1, flipped sigmas)")
    for slot, src in enumerate([(ckpt, 0), (prompt, 0), (prompt, 0), (select, 0), (flip, 0), (encode, 0)]):
        g.link(*src, invert, slot)
    return invert


def aid_real_images(defs: Mapping[str, Mapping], out: Path) -> None:
    """A prompt morph whose endpoints start from two inverted pictures (``start_a`` / ``start_b``)."""
    g = Graph(defs)
    ckpt, a, b, neg, lat = morph_prompts(g)
    starts = [inverted_picture(g, ckpt, prompt, name, label, y)
              for prompt, name, label, y in ((a, "cat.png", "A (first frame)", 760),
                                             (b, "dog.png", "B (last frame)", 1400))]
    # cfg 1, the inversion's: at a higher cfg the endpoints leave the inverted pictures (the shape model at cfg 2
    # turns picture A's circle into a triangle)
    aid = interpolation_node(g, (1470, 60), 9, with_guide=False, starts=True, cfg=1.0)
    for slot, src in enumerate([(ckpt, 0), (a, 0), (b, 0), (neg, 0), (lat, 0)]):
        g.link(*src, aid, slot)
    g.link(starts[0], 0, aid, 6)
    g.link(starts[1], 0, aid, 7)
    decode_sequence(g, ckpt, aid, 1900, "aid_real_images")
    g.note((20, 330), (330, 480),
           "AID from real pictures: the first frame starts from picture A inverted, the last from picture B "
           "inverted, and the frames between from the slerp of the two.\n\n"
           "Put your pictures in the Load Image nodes and describe each in its prompt. Each is scaled to the frame "
           "size (the Empty Latent Image's), VAE-encoded and inverted: SamplerCustom with its noise off and cfg 1 "
           "runs the sampler backwards over the flipped sigmas of the same scheduler and step count as the "
           "interpolation. The endpoints give the pictures back as far as the inversion is exact: at cfg 1, as "
           "here (the inversion's cfg); a higher cfg sharpens the frames between but moves the endpoints away from "
           "the pictures.\n\n"
           "SD1.x, SD2.x and SDXL only: on flow models (SD3, Flux, ...) ComfyUI's FlipSigmas inversion cannot make "
           "a start latent.")
    g.save("aid_real_images", out)


def aid_image_morph(defs: Mapping[str, Mapping], out: Path) -> None:
    """Image morphing with the IP-Adapter pack (ComfyUI_IPAdapter_plus): one checkpoint, each picture applied to it
    by the pack's IPAdapter node, the two models into STORM Image Morph. The pack's nodes keep positional widget
    values, in the pack's input order (model, preset; weight, start_at, end_at, weight_type)."""
    g = Graph(defs)
    ckpt = checkpoint(g)
    unified = g.node("IPAdapterUnifiedLoader", (20, 330), (320, 80), ["STANDARD (medium strength)"],
                     inputs=[("model", "MODEL"), ("ipadapter", "IPADAPTER")],
                     outputs=[("model", "MODEL"), ("ipadapter", "IPADAPTER")])
    g.link(ckpt, 0, unified, 0)
    adapted = []
    for i, (name, label) in enumerate((("cat.png", "A (first frame)"), ("dog.png", "B (last frame)"))):
        image = g.node("LoadImage", (380, 20 + 380 * i), (320, 320), [name, "image"],
                       outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], title=f"Image {label}")
        ipa = g.node("IPAdapter", (740, 20 + 380 * i), (320, 200), [0.5, 0.0, 1.0, "standard"],
                     inputs=[("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE"),
                             ("attn_mask", "MASK")],
                     outputs=[("MODEL", "MODEL")], title=f"IPAdapter (image {label.split()[0]})")
        g.link(unified, 0, ipa, 0)
        g.link(unified, 1, ipa, 1)
        g.link(image, 0, ipa, 2)
        adapted.append(ipa)
    pos = clip_encode(g, ckpt, "best quality, high quality", (740, 780), "Prompt (every frame)")
    neg = negative(g, ckpt, pos=(740, 950))
    lat = empty_latent(g, pos=(740, 1120))
    morph = g.node("STORM_ImageMorph", (1110, 60), (380, 480), {"frames": 9, "seed": 1002},
                   inputs=[("model_a", "MODEL"), ("model_b", "MODEL"), ("positive", "CONDITIONING"),
                           ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
                   outputs=[("frames", "LATENT"), ("attention", "STORM_ATTENTION"), ("coefficients", "STRING")])
    for slot, src in enumerate([(adapted[0], 0), (adapted[1], 0), (pos, 0), (neg, 0), (lat, 0)]):
        g.link(*src, morph, slot)
    decode_sequence(g, ckpt, morph, 1540, "aid_image_morph")
    g.note((20, 490), (330, 420),  # below the IP-Adapter loader as drawn without that pack (108 px)
           "Image morphing (PAID, He et al., NeurIPS 2024): a morph from picture A to picture B.\n\n"
           "Needs the IP-Adapter pack (ComfyUI_IPAdapter_plus) and its SD1.5 models; put your two pictures in "
           "the Load Image nodes. Each picture is applied to the same checkpoint by its own IPAdapter node; STORM "
           "Image Morph mixes the two models' cross-attention, (1 - t) A + t B, and interpolates self-attention on "
           "the first half of the steps. The first and last frames are exactly the plain generations of the two "
           "IP-Adapter models. Weight 0.5 leaves room for the prompt; raise it for closer copies of the "
           "pictures.\n\n"
           "Image-control: connect the checkpoint's MODEL (no IPAdapter) to model_a; t then acts as the picture's "
           "IP-Adapter weight, from 0 (the plain prompt) to 1.")
    g.save("aid_image_morph", out)


def paid_composition(defs: Mapping[str, Mapping], out: Path) -> None:
    g = Graph(defs)
    ckpt = checkpoint(g)
    a = clip_encode(g, ckpt, "a dog", (380, 20), "Prompt A")
    b = clip_encode(g, ckpt, "a car", (380, 190), "Prompt B")
    guide = g.node("STORM_SubjectTokens", (380, 360), (400, 330),
                   {"text": "a dog driving a car", "subjects": "dog, car"},
                   inputs=[("clip", "CLIP")],
                   outputs=[("tokens", "STORM_TOKENS"), ("conditioning", "CONDITIONING"), ("tokenization", "STRING")],
                   title="Guide prompt (STORM Subject Tokens)")
    g.link(ckpt, 1, guide, 0)
    neg = negative(g, ckpt, pos=(380, 750))
    lat = empty_latent(g, pos=(380, 930))
    paid = interpolation_node(g, (840, 60), 7, with_guide=True)
    for slot, src in enumerate([(ckpt, 0), (a, 0), (b, 0), (neg, 0), (lat, 0), (guide, 1)]):
        g.link(*src, paid, slot)
    # its optional clip_vision, clip and vae inputs (CLIP-score selection) and its text box: 282 px tall in frontend 1.58
    pick = g.node("STORM_SelectFrame", (1270, 40), (340, 300), {},
                  inputs=[("frames", "LATENT"), ("attention", "STORM_ATTENTION"), ("tokens", "STORM_TOKENS")],
                  outputs=[("latent", "LATENT"), ("index", "INT"), ("scores", "STRING")])
    g.link(paid, 0, pick, 0)
    g.link(paid, 1, pick, 1)
    g.link(guide, 0, pick, 2)
    dec = g.node("VAEDecode", (1660, 60), (210, 50), [], inputs=[("samples", "LATENT"), ("vae", "VAE")],
                 outputs=[("IMAGE", "IMAGE")])
    g.link(pick, 0, dec, 0)
    g.link(ckpt, 2, dec, 1)
    best = g.node("SaveImage", (1900, 60), (420, 460), ["storm/paid_composition"], inputs=[("images", "IMAGE")])
    g.link(dec, 0, best, 0)
    dec_all = g.node("VAEDecode", (1660, 560), (210, 50), [], inputs=[("samples", "LATENT"), ("vae", "VAE")],
                     outputs=[("IMAGE", "IMAGE")])
    g.link(paid, 0, dec_all, 0)
    g.link(ckpt, 2, dec_all, 1)
    every = g.node("PreviewImage", (1900, 560), (420, 300), [], inputs=[("images", "IMAGE")], title="All frames")
    g.link(dec_all, 0, every, 0)
    heat = g.node("STORM_AttentionHeatmap", (1270, 420), (340, 520), {},
                  inputs=[("attention", "STORM_ATTENTION"), ("latent", "LATENT"), ("tokens", "STORM_TOKENS"),
                          ("image", "IMAGE"), ("batch_index", "INT", "widget")],
                  outputs=[("grid", "IMAGE"), ("overlay", "IMAGE"), ("mask", "MASK"), ("log", "STRING")])
    g.link(paid, 1, heat, 0)
    g.link(paid, 0, heat, 1)
    g.link(guide, 0, heat, 2)
    g.link(pick, 1, heat, 4)  # the heatmap shows the frame Select Frame picked
    save_h = g.node("SaveImage", (1270, 1300), (340, 300), ["storm/paid_composition_heatmaps"],
                    inputs=[("images", "IMAGE")])
    g.link(heat, 0, save_h, 0)
    g.note((20, 330), (330, 320),
           "PAID compositional generation (He et al., NeurIPS 2024): interpolate between 'a dog' and 'a car' "
           "while the frames follow the guide prompt 'a dog driving a car'.\n\n"
           "STORM Select Frame picks the frame where both 'dog' and 'car' are most attended (Attend-and-Excite's "
           "measure on each frame's own attention maps), so no CLIP download is needed. The heatmap shows "
           "that frame: its batch_index input is Select Frame's index output.")
    g.save("paid_composition", out)


def sd35_attend_and_excite(defs: Mapping[str, Mapping], out: Path) -> None:
    g = Graph(defs)
    ckpt = checkpoint(g, "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors")
    attend_excite_graph(g, ckpt, dit_latent, "sd35_attend_and_excite", steps=28, cfg=4.5, sampler_name="euler",
                        scheduler="sgm_uniform")
    g.note((20, 330), (330, 300),
           "Attend-and-Excite on SD3.5 (a DiT) with ComfyUI-STORM.\n\n"
           "The maps are the image-to-text part of every block's joint attention; Subject Tokens finds the "
           "words in the CLIP columns and in the T5 rows.\n\n"
           "SD3.5's usual sampling: 28 steps, cfg 4.5, sgm_uniform. The A&E settings are the paper's (for "
           "SD1.4's UNet), not yet calibrated for SD3.5: raise the step size if the weakest subject's "
           "attention barely moves in the log. Needs a current ComfyUI.")
    g.save("sd35_attend_and_excite", out)


def flux_heatmaps(defs: Mapping[str, Mapping], out: Path) -> None:
    g = Graph(defs)
    ckpt = checkpoint(g, "flux1-dev-fp8.safetensors")
    tok = subject_tokens(g, ckpt, "a cat and a dog", "cat, dog")
    fg = g.node("FluxGuidance", (830, 420), (320, 60), [3.5], inputs=[("conditioning", "CONDITIONING")],
                outputs=[("CONDITIONING", "CONDITIONING")])
    g.link(tok, 1, fg, 0)
    neg = g.node("CLIPTextEncode", (380, 440), (400, 130), [""], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")], title="CLIP Text Encode (unused at cfg 1)")
    g.link(ckpt, 1, neg, 0)
    lat = dit_latent(g)
    rec = g.node("STORM_AttentionRecorder", (830, 60), (360, 100), {}, inputs=[("model", "MODEL")],
                 outputs=[("model", "MODEL"), ("attention", "STORM_ATTENTION")])
    g.link(ckpt, 0, rec, 0)
    ks = g.node("KSampler", (1240, 120), (340, 330), [42, "fixed", 20, 1.0, "euler", "simple", 1.0],
                inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                        ("latent_image", "LATENT")],
                outputs=[("LATENT", "LATENT")])
    for slot, src in enumerate([(rec, 0), (fg, 0), (neg, 0), (lat, 0)]):
        g.link(*src, ks, slot)
    decode_save_heatmaps(g, ckpt, (ks, 0), (rec, 1), (tok, 0), 1630, "flux_heatmaps")
    g.note((20, 330), (330, 260),
           "Attention heatmaps of Flux (a DiT) with ComfyUI-STORM.\n\n"
           "STORM Attention Recorder records the image-to-text part of every block's joint attention while "
           "the core KSampler runs (Flux: cfg 1 with FluxGuidance); STORM Attention Heatmap shows each "
           "subject's map, found in Flux's T5 rows. The image is unchanged by recording. Needs a current "
           "ComfyUI.")
    g.save("flux_heatmaps", out)


def separate_files(g: Graph, unet: str, clip: str, clip_type: str, vae: str,
                   shift: float | None) -> tuple[dict, dict, dict]:
    """The loaders of a family shipped as separate files (diffusion model, text encoder, VAE), as its ComfyUI
    templates load it, and ModelSamplingAuraFlow's ``shift`` on the model (None: the model's own, no node): (model
    source, CLIP loader, VAE loader)."""
    unet_node = g.node("UNETLoader", (20, 40), (320, 90), [unet, "default"], outputs=[("MODEL", "MODEL")])
    clip_node = g.node("CLIPLoader", (20, 170), (320, 110), [clip, clip_type, "default"], outputs=[("CLIP", "CLIP")])
    vae_node = g.node("VAELoader", (20, 320), (320, 60), [vae], outputs=[("VAE", "VAE")])
    if shift is None:
        return unet_node, clip_node, vae_node
    shifted = g.node("ModelSamplingAuraFlow", (20, 420), (320, 60), [shift], inputs=[("model", "MODEL")],
                     outputs=[("MODEL", "MODEL")])
    g.link(unet_node, 0, shifted, 0)
    return shifted, clip_node, vae_node


def z_image_attend_and_excite(defs: Mapping[str, Mapping], out: Path) -> None:
    """Z-Image Turbo as its ComfyUI template runs it (ModelSamplingAuraFlow 3, res_multistep / simple, 8 steps,
    cfg 1), with Attend-and-Excite and heatmaps."""
    g = Graph(defs)
    model, clip, vae = separate_files(g, "z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "lumina2",
                                      "ae.safetensors", 3.0)
    tok = g.node("STORM_SubjectTokens", (380, 60), (400, 330), {"text": "a cat and a dog", "subjects": "cat, dog"},
                 inputs=[("clip", "CLIP")],
                 outputs=[("tokens", "STORM_TOKENS"), ("conditioning", "CONDITIONING"), ("tokenization", "STRING")],
                 title="STORM Subject Tokens (positive prompt)")
    g.link(clip, 0, tok, 0)
    neg = empty_prompt(g, clip, (380, 440), "CLIP Text Encode (unused at cfg 1)")
    lat = dit_latent(g)
    ae = g.node("STORM_AttendAndExcite", (830, 40), (360, 330), {},
                inputs=[("tokens", "STORM_TOKENS"), ("guidance", "STORM_GUIDANCE")], outputs=[("guidance", "STORM_GUIDANCE")])
    g.link(tok, 0, ae, 0)
    ks = guided_ksampler(g, (1240, 120), [(model, 0), (ae, 0), (tok, 1), (neg, 0), (lat, 0)], steps=8, cfg=1.0,
                         sampler_name="res_multistep", scheduler="simple")
    decode_save_heatmaps(g, vae, (ks, 0), (ks, 1), (tok, 0), 1630, "z_image_attend_and_excite", vae_slot=0)
    g.note((20, 520), (330, 330),
           "Attend-and-Excite on Z-Image Turbo with ComfyUI-STORM.\n\n"
           "Loaded as the Z-Image Turbo template loads it: the diffusion model, Qwen3 4B (CLIP Loader type "
           "'lumina2') and the Flux VAE; ModelSamplingAuraFlow shift 3; res_multistep / simple, 8 steps, cfg 1.\n\n"
           "Subject Tokens finds 'cat' and 'dog' in Qwen3's rows of the chat template Z-Image encodes the prompt in. "
           "A&E guides the first half of the steps (4 of 8). The A&E settings are the paper's (for SD1.4's UNet), "
           "not calibrated for Z-Image: raise the step size if the weakest subject's attention barely moves in the "
           "log. Needs a current ComfyUI.")
    g.save("z_image_attend_and_excite", out)


def qwen_image_syngen(defs: Mapping[str, Mapping], out: Path) -> None:
    """Qwen-Image as its ComfyUI template runs it (ModelSamplingAuraFlow 3.1, euler / simple), with SynGen's
    attribute binding and heatmaps of every word."""
    g = Graph(defs)
    model, clip, vae = separate_files(g, "qwen_image_2512_fp8_e4m3fn.safetensors",
                                      "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image",
                                      "qwen_image_vae.safetensors", 3.1)
    ana = prompt_analysis(g, (clip, 0), "a red crown and a golden strawberry")
    neg = empty_prompt(g, clip, (380, 610), "CLIP Text Encode (negative prompt)")
    lat = dit_latent(g, pos=(380, 790), size=1328)
    sg = g.node("STORM_SynGen", (850, 40), (360, 260), {},  # the paper's defaults
                inputs=[("analysis", "STORM_ANALYSIS"), ("guidance", "STORM_GUIDANCE")],
                outputs=[("guidance", "STORM_GUIDANCE")])
    g.link(ana, 0, sg, 0)
    ks = guided_ksampler(g, (1260, 120), [(model, 0), (sg, 0), (ana, 2), (neg, 0), (lat, 0)], seed=1924, steps=50,
                         cfg=4.0, sampler_name="euler", scheduler="simple")
    decode_save_heatmaps(g, vae, (ks, 0), (ks, 1), (ana, 1), 1650, "qwen_image_syngen", show="all words",
                         vae_slot=0)
    g.note((20, 520), (330, 330),
           "SynGen on Qwen-Image with ComfyUI-STORM: bind 'red' to the crown and 'golden' to the strawberry.\n\n"
           "Loaded as the Qwen-Image 2512 template loads it: the diffusion model, Qwen2.5-VL 7B (CLIP Loader type "
           "'qwen_image') and Qwen-Image's VAE; ModelSamplingAuraFlow shift 3.1; euler / simple, 50 steps, cfg 4.\n\n"
           "Prompt Analysis finds the words in the Qwen2.5-VL rows Qwen-Image keeps of its chat template. The "
           "SynGen settings are the paper's (for SD1.4's UNet), not calibrated for Qwen-Image. Needs a current "
           "ComfyUI.")
    g.save("qwen_image_syngen", out)


def krea2_storm_spatial(defs: Mapping[str, Mapping], out: Path) -> None:
    """Krea 2 Turbo as its ComfyUI template runs it (no sampling-shift node, Empty Latent Image, euler / simple,
    8 steps, cfg 1), with STORM's spatial transport and heatmaps."""
    g = Graph(defs)
    model, clip, vae = separate_files(g, "krea2_turbo_int8_convrot.safetensors", "qwen3vl_4b_fp8_scaled.safetensors",
                                      "krea2", "qwen_image_vae.safetensors", None)
    ana = prompt_analysis(g, (clip, 0), "a cat to the left of a dog")
    neg = empty_prompt(g, clip, (380, 610), "CLIP Text Encode (unused at cfg 1)")
    lat = empty_latent(g, pos=(380, 790), size=1024)
    sto = spatial_transport(g, ana)
    ks = guided_ksampler(g, (1280, 120), [(model, 0), (sto, 0), (ana, 2), (neg, 0), (lat, 0)], steps=8, cfg=1.0,
                         sampler_name="euler", scheduler="simple")
    decode_save_heatmaps(g, vae, (ks, 0), (ks, 1), (ana, 1), 1670, "krea2_storm_spatial", vae_slot=0)
    g.note((20, 430), (330, 360),
           "STORM (Han et al., CVPR 2025) on Krea 2 Turbo with ComfyUI-STORM: the cat to the left of the dog.\n\n"
           "Loaded as the Krea 2 Turbo template loads it: the diffusion model (its int8 ConvRot file), Qwen3-VL 4B "
           "(CLIP Loader type 'krea2') and Qwen-Image's VAE; euler / simple, 8 steps, cfg 1.\n\n"
           "Prompt Analysis finds the relation in the dependency parse and the words in the Qwen3-VL rows Krea 2 keeps "
           "of its chat template. STORM's settings are the paper's (for SD's UNets), not calibrated for Krea 2. "
           "Needs a current ComfyUI.")
    g.save("krea2_storm_spatial", out)


EXAMPLES = (attend_and_excite, syngen, astar, storm_spatial, aid_morph, aid_dynamic_morph, paid_composition,
            sd35_attend_and_excite, flux_heatmaps, z_image_attend_and_excite, qwen_image_syngen, aid_image_morph,
            aid_real_images, krea2_storm_spatial)


def build_all(out: Path = OUT) -> list[Path]:
    """Write every example workflow into ``out``; the paths written."""
    defs = {node_id: cls.INPUT_TYPES() for node_id, cls in load_pack().NODE_CLASS_MAPPINGS.items()}
    for example in EXAMPLES:
        example(defs, out)
    return [out / f"{FILE_STEMS[example.__name__]}.json" for example in EXAMPLES]


if __name__ == "__main__":
    for path in build_all():
        print(f"wrote {path}")
