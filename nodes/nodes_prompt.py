"""Prompt nodes: STORM Subject Tokens (subject words -> CLIP columns) and STORM Prompt Analysis
(spaCy parse of the prompt aligned to the model's CLIP tokens)."""

from __future__ import annotations

from ..storm_ops.prompt.analysis import PARSERS, analyze_prompt
from ..storm_ops.prompt.nlp import check_pipeline_name
from ..storm_ops.prompt.overrides import apply_overrides, split_binding_override, split_relation_override
from ..storm_ops.tokens.layout import PromptTokens
from ..storm_ops.tokens.subjects import check_subject_spec, resolve_subjects
from .errors import node_errors
from .host_tokenizer import encode_with_layout
from .validation import validate_text_inputs


class SubjectTokens:
    """STORM Subject Tokens: prompt encoding + the CLIP token positions of its subjects."""

    NODE_NAME = "STORM Subject Tokens"
    SEARCH_ALIASES = ("subject words", "token indices", "clip tokens", "attend and excite tokens", "prompt tokens")  # node search
    DESCRIPTION = (
        "Encodes the prompt (like CLIP Text Encode) and finds the CLIP token positions of the subject "
        "words with the model's own tokenizer. Use its conditioning as the sampler's positive input so "
        "the positions match the encoding. The text output lists every token with its index.")
    CATEGORY = "STORM/prompt"
    FUNCTION = "run"
    RETURN_TYPES = ("STORM_TOKENS", "CONDITIONING", "STRING")
    RETURN_NAMES = ("tokens", "conditioning", "tokenization")
    OUTPUT_TOOLTIPS = (
        "The prompt's token layout and the selected subjects, for the guidance and visualiser nodes.",
        "The encoded prompt (same as CLIP Text Encode); connect it to the sampler's positive input.",
        "The tokenisation with indices and the resolved subjects, for checking or for choosing indices.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The CLIP model of the checkpoint (its tokenizer defines the positions)."}),
            "text": ("STRING", {"multiline": True, "default": "a cat and a dog",
                                "tooltip": "The positive prompt. Prompts over 75 tokens are split into 77-token chunks like CLIP Text Encode does."}),
            "subjects": ("STRING", {"default": "cat, dog",
                                    "tooltip": "Subject words of the prompt, comma separated ('cat, dog'). Phrases ('teddy bear') "
                                               "and multi-piece words work; 'dog#2' picks the second 'dog'; numbers are token indices "
                                               "(see the tokenization output, the first word is 1)."}),
        }}

    @node_errors(NODE_NAME)
    def run(self, clip, text, subjects):
        layout, conditioning = encode_with_layout(clip, text)
        subject_list = resolve_subjects(layout, subjects)
        tokens = PromptTokens(text, layout, subject_list)
        description = tokens.describe()
        return {"ui": {"storm_text": [description]}, "result": (tokens, conditioning, description)}


class PromptAnalysisNode:
    """STORM Prompt Analysis: entities, modifier->noun bindings and spatial relations of a prompt."""

    NODE_NAME = "STORM Prompt Analysis"
    SEARCH_ALIASES = ("spacy", "parse prompt", "attribute binding", "spatial relations", "left of")  # node search
    DESCRIPTION = (
        "Parses the prompt with spaCy (dependency parse) and aligns every word to the model's CLIP token "
        "positions: the objects (nouns), the modifiers bound to each noun ('a red crown' -> red binds to "
        "crown) for SynGen, and spatial relations ('a cat to the left of a dog') for STORM. Without an "
        "installed spaCy English pipeline a small rule-based analysis handles plain 'adjective noun and "
        "adjective noun' prompts (the text output says so and how to install one). Encodes the prompt "
        "like CLIP Text Encode.")
    CATEGORY = "STORM/prompt"
    FUNCTION = "analyze"
    RETURN_TYPES = ("STORM_ANALYSIS", "STORM_TOKENS", "CONDITIONING", "STRING")
    RETURN_NAMES = ("analysis", "tokens", "conditioning", "text")
    OUTPUT_TOOLTIPS = (
        "The analysis, for the SynGen and STORM spatial nodes.",
        "The prompt's tokens with the objects (or the 'subjects' override) as subjects, for "
        "Attend-and-Excite, A-STAR and the heatmap.",
        "The encoded prompt (same as CLIP Text Encode); connect it to the sampler's positive input.",
        "What was found, with token indices and any notes (also shown in the node after a run).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The checkpoint's CLIP (its tokenizer defines the positions)."}),
            "text": ("STRING", {"multiline": True, "default": "a red crown and a golden strawberry",
                                "tooltip": "The positive prompt."}),
            "parser": (list(PARSERS), {"default": "auto",
                                       "tooltip": "auto: spaCy when an English pipeline is installed, otherwise the "
                                                  "rule-based fallback; spacy: require spaCy; rules: the fallback only."}),
        }, "optional": {
            "pipeline": ("STRING", {"default": "",
                                    "tooltip": "Name of an installed English spaCy pipeline to use (e.g. "
                                               "en_core_web_trf); empty = the most accurate installed one. Paths "
                                               "and other packages are refused."}),
            "bindings": ("STRING", {"multiline": True, "default": "",
                                    "tooltip": "Override the modifier->noun bindings, e.g. 'red -> crown; golden -> "
                                               "strawberry' ('word#2' for a repeated word). Empty = automatic."}),
            "relations": ("STRING", {"multiline": True, "default": "",
                                     "tooltip": "Override the spatial relations, e.g. 'cat left of dog; bird above cat' "
                                                "(left of, right of, above, below, near). Empty = automatic."}),
            "subjects": ("STRING", {"default": "",
                                    "tooltip": "Subjects of the tokens output ('cat, dog'); empty = the objects found."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, pipeline=None, bindings=None, relations=None, subjects=None):
        """Syntax of the text widgets when the prompt is queued (see nodes.validation); the words
        themselves are looked up in the prompt's tokens when the node runs."""
        return validate_text_inputs(
            cls.NODE_NAME,
            pipeline=(pipeline, lambda text: text.strip() and check_pipeline_name(text.strip())),
            bindings=(bindings, split_binding_override),
            relations=(relations, split_relation_override),
            subjects=(subjects, lambda text: text.strip() and check_subject_spec(text)))

    @node_errors(NODE_NAME)
    def analyze(self, clip, text, parser, pipeline="", bindings="", relations="", subjects=""):
        pipeline = pipeline.strip()
        if pipeline:  # before anything is loaded, whatever the parser
            check_pipeline_name(pipeline)
        layout, conditioning = encode_with_layout(clip, text)
        analysis = analyze_prompt(text, layout, parser=parser, pipeline=pipeline or None)
        analysis = apply_overrides(analysis, bindings, relations)
        chosen = resolve_subjects(layout, subjects) if subjects.strip() else analysis.entities
        tokens = PromptTokens(text, layout, tuple(chosen))
        description = analysis.describe() + "\n\nTokens:\n" + layout.describe()
        return {"ui": {"storm_text": [description]},
                "result": (analysis, tokens, conditioning, description)}
