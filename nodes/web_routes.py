"""HTTP routes of the pack for its frontend extension (``web/storm.js``), on the host's server.

``GET /storm/node_info``: ``{node_id: {"search_aliases": [...]}}`` for every STORM node. ComfyUI
versions that read a node's ``SEARCH_ALIASES`` put them into ``/object_info`` themselves; for older
ones (0.3.64 and the pip fork do not) ``web/storm.js`` fills them in from here, so node search finds
"morph" or "placement" on every host. The node classes are the one owner of the aliases.

Routes are added only when a server is running (not when the executor or the tests load the pack).
"""

from __future__ import annotations

import sys

NODE_INFO_ROUTE = "/storm/node_info"


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

    return True
