"""HTTP routes of the pack for its frontend extension (``web/storm.js``), on the host's server.

``GET /storm/node_info``: ``{node_id: {"search_aliases": [...]}}`` for every STORM node. ComfyUI
versions that read a node's ``SEARCH_ALIASES`` put them into ``/object_info`` themselves; for older
ones (0.3.64 and the pip fork do not) ``web/storm.js`` fills them in from here, so node search finds
"morph" or "placement" on every host. The node classes are the one owner of the aliases.

``GET /storm/tokens?text=...[&family=sd3|flux|flux2|chroma|qwen_image|z_image|krea2]``: ``{"words": [{"text", "positions", "ref", "streams"}, ...],
"columns", "streams", "family"}``, the prompt's words with their columns and the reference a subject list uses for them
(``storm_ops.tokens.subjects.word_references``): the token chips of STORM Subject Tokens and Prompt Analysis.
Without ``family`` the columns are SD1.x/SDXL's CLIP columns; with it, the rows of an SD3 or Flux
conditioning (``streams``: each word's columns per stream, e.g. ``[["CLIP", [2]], ["T5", [79]]]``;
``columns``: the layout's summary, e.g. ``"CLIP 1 x 77 + T5 77"``; ``streams``: their names). The browser reads the family off the
loader that feeds the node's ``clip`` input.

Routes are added only when a server is running (not when the executor or the tests load the pack).
"""

from __future__ import annotations

import sys

NODE_INFO_ROUTE = "/storm/node_info"
TOKENS_ROUTE = "/storm/tokens"
#: longest prompt the tokens route reads (characters); longer ones are cut (the chips are a preview)
MAX_TEXT = 4000


def prompt_tokens(text: str, family: str | None = None) -> dict:
    """What :data:`TOKENS_ROUTE` returns for ``text`` (``family``: ``"sd3"``, ``"flux"``, ``"flux2"``, ``"chroma"``, ``"qwen_image"``, ``"z_image"``, ``"krea2"`` or None for CLIP)."""
    from ..storm_ops.tokens.subjects import word_references
    from .host_tokenizer import text_layout

    layout = text_layout(text[:MAX_TEXT], family or None)
    words = [{**word, "streams": [[name, list(cols)] for name, cols in layout.by_stream(word["positions"])]}
             for word in word_references(layout)]
    return {"words": words, "columns": layout.columns_summary(), "family": family or "clip",
            "streams": [layout.name] + [name for name, _ in layout.streams]}


def node_info(mappings: dict) -> dict:
    """What :data:`NODE_INFO_ROUTE` returns for the pack's ``NODE_CLASS_MAPPINGS``."""
    return {node_id: {"search_aliases": list(getattr(cls, "SEARCH_ALIASES", ()))} for node_id, cls in mappings.items()}


def register_routes(mappings: dict) -> bool:
    """Add the pack's routes to the running ComfyUI server; False when there is none.

    ComfyUI's ``main.py`` creates its ``server.PromptServer`` before it loads custom nodes; without one
    (the executor alone, the tests) nothing is imported or added.
    """
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None:
        return False
    from aiohttp import web
    info = node_info(mappings)

    @instance.routes.get(NODE_INFO_ROUTE)
    async def storm_node_info(request):
        return web.json_response(info)

    @instance.routes.get(TOKENS_ROUTE)
    async def storm_tokens(request):
        try:
            return web.json_response(prompt_tokens(request.query.get("text", ""), request.query.get("family")))
        except Exception as exc:  # noqa: BLE001 - the chips are a preview: report, never break the page
            return web.json_response({"words": [], "error": f"{type(exc).__name__}: {exc}"}, status=400)

    return True
