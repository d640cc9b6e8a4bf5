"""Run ComfyUI workflows in-process through the host's own executor.

* :func:`ui_to_api` converts a **UI-format** workflow (what the frontend saves and what
  ``example_workflows/*.json`` contain: ``nodes`` + ``links`` + ``widgets_values``) into an
  **API-format** prompt ``{node_id: {"class_type", "inputs", "_meta"}}`` the way the frontend's
  ``graphToPrompt`` does.
* :func:`substitute_checkpoints` swaps ``CheckpointLoaderSimple`` for the test-only
  ``STORMTest_TinyCheckpointLoader`` (``harness/tiny_nodes``) so workflows run on tiny models.
* :class:`WorkflowRunner` loads the host's nodes plus two custom-node folders -- the ComfyUI-STORM
  pack (``REPO_ROOT``) and ``tiny_nodes`` -- with the host's own custom-node loader from a base
  directory ``<base>/custom_nodes/{ComfyUI-STORM,storm_test_tiny_nodes}`` (symlinks), validates
  prompts with the host's ``validate_prompt`` and executes them with **one** ``PromptExecutor`` per
  process, so queueing several prompts shows the host's caching exactly as a server would.

The host's entry points (all in ``_Host``):

* base directory: ``args.base_directory``, set before ``folder_paths`` is first imported;
  input/output/temp are also set with the setters.
* nodes: ``nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)`` then
  ``await nodes.load_custom_node(<folder>, ...)`` per pack (the same call ``init_external_custom_nodes``
  makes).
* validation: ``await execution.validate_prompt(prompt_id, prompt, None)``.
* executor: ``execution.PromptExecutor(server, cache_type=CacheType.CLASSIC, ...)`` with the cache
  arguments ``main.py`` passes (0.3.64: ``cache_size``; 0.33: ``cache_args``), UI outputs in
  ``executor.history_result["outputs"]``.

The runner is process-global because the hosts' node registries, ``folder_paths`` and custom-node
modules are process-global. ``PromptExecutor.execute`` runs ``asyncio.run``, so do not call
:meth:`WorkflowRunner.run` from inside a running event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .host import REPO_ROOT, TINY_NODES_DIR, HostInfo, ensure_host

logger = logging.getLogger(__name__)

#: The example workflows: a short key (what the scripts' ``--only`` and the tests use) -> the file's
#: stem in ``example_workflows/``. The frontend's template browser shows a custom-node example's file
#: name as both its title and its description, so the name says what the example does.
EXAMPLES: dict[str, str] = {
    "attend_and_excite": "Attend-and-Excite - lost objects",
    "syngen": "SynGen - bind colours to nouns",
    "astar": "A-STAR - keep both objects",
    "storm_spatial": "STORM - put A left of B",
    "aid_morph": "AID - morph two prompts",
    "aid_dynamic_morph": "AID - dynamic selection morph",
    "paid_composition": "PAID - compose two concepts",
    "sd35_attend_and_excite": "SD3.5 - lost objects, heatmaps",
    "flux_heatmaps": "Flux - attention heatmaps",
    "z_image_attend_and_excite": "Z-Image - lost objects, heatmaps",
    "qwen_image_syngen": "Qwen-Image - bind each colour",
    "aid_image_morph": "AID - morph two images",
    "aid_real_images": "AID - morph two real pictures",
    "krea2_storm_spatial": "Krea 2 - put A left of B",
}
EXAMPLES_DIR = REPO_ROOT / "example_workflows"


def example_path(key: str) -> Path:
    """The file of an example workflow, by its key in :data:`EXAMPLES`."""
    return EXAMPLES_DIR / f"{EXAMPLES[key]}.json"


def example_key(path: Path) -> str:
    """The key in :data:`EXAMPLES` of an example workflow's file (its stem if it is not listed)."""
    stem = Path(path).stem
    return next((k for k, v in EXAMPLES.items() if v == stem), stem)


def checkpoint_archs(path: Path) -> list[str]:
    """The tiny architecture each ``CheckpointLoaderSimple`` of a UI-format workflow names (in node order)."""
    from .tiny_models import arch_from_checkpoint_name

    nodes = json.loads(Path(path).read_text())["nodes"]
    return [arch_from_checkpoint_name(n["widgets_values"][0]) for n in nodes if n["type"] == "CheckpointLoaderSimple"]


def needs_dit(path: Path) -> bool:
    """Whether an example workflow loads a DiT (an SD3 or Flux checkpoint, or a separate diffusion-model file)."""
    from .tiny_models import DIT_ARCHS

    nodes = json.loads(Path(path).read_text())["nodes"]
    return any(arch in DIT_ARCHS for arch in checkpoint_archs(path)) or any(n["type"] == "UNETLoader" for n in nodes)


def example_files() -> list[Path]:
    """Every example workflow file in ``example_workflows/``, sorted by name."""
    return sorted(EXAMPLES_DIR.glob("*.json"))


def select_examples(only: Iterable[str] = ()) -> list[Path]:
    """The example files named in ``only`` (by key or by file stem); all when it is empty.
    An unknown name raises ValueError listing the known keys."""
    paths, only = example_files(), set(only)
    names = {p.stem for p in paths} | {example_key(p) for p in paths}
    unknown = only - names
    if unknown:
        raise ValueError(f"unknown example(s) {sorted(unknown)}; known: {', '.join(sorted(map(example_key, paths)))}")
    return [p for p in paths if not only or p.stem in only or example_key(p) in only]


#: Folder names of the two custom-node packs inside ``<base>/custom_nodes``.
PACK_FOLDER = "ComfyUI-STORM"
TINY_NODES_FOLDER = "storm_test_tiny_nodes"
TINY_LOADER = "STORMTest_TinyCheckpointLoader"
#: the core loaders of separate model, text-encoder and VAE files -> (their tiny stand-in, the inputs it reads)
TINY_FILE_LOADERS = {"UNETLoader": ("STORMTest_TinyUNETLoader", ("unet_name",)),
                     "CLIPLoader": ("STORMTest_TinyCLIPLoader", ("clip_name", "type")),
                     "VAELoader": ("STORMTest_TinyVAELoader", ("vae_name",))}
#: image prompts: the core LoadImage and the IP-Adapter pack's nodes (ComfyUI_IPAdapter_plus, which the tests do not
#: install) -> their test-only stand-ins in ``tiny_nodes`` (the same inputs and outputs), and the inputs kept
TINY_IMAGE_PROMPT_NODES = {
    "LoadImage": ("STORMTest_LoadImage", ("image",)),
    "IPAdapterUnifiedLoader": ("STORMTest_IPAdapterUnifiedLoader", ("model", "preset", "ipadapter")),
    "IPAdapter": ("STORMTest_IPAdapter", ("model", "ipadapter", "image", "weight", "start_at", "end_at",
                                          "weight_type", "attn_mask")),
}
#: third-party node types the examples use whose definitions (for :func:`ui_to_api`) are their stand-ins' when the
#: pack is not installed: the stand-ins declare the pack's inputs in the pack's order
THIRD_PARTY_NODES = ("IPAdapterUnifiedLoader", "IPAdapter")


def with_third_party_defs(node_defs: Mapping[str, Any]) -> dict[str, Any]:
    """``node_defs`` plus, for each of :data:`THIRD_PARTY_NODES` it lacks (the pack is not installed), its stand-in's
    definition, so :func:`ui_to_api` reads the pack's nodes of an example by the stand-in's inputs (same names and order)."""
    defs = dict(node_defs)
    for name in THIRD_PARTY_NODES:
        stand_in = TINY_IMAGE_PROMPT_NODES[name][0]
        if name not in defs and stand_in in defs:
            defs[name] = defs[stand_in]
    return defs


#: per node type: widget values replaced so an example runs in seconds on CPU with the tiny models
#: (image size and step count only; every other value is the workflow's own)
CPU_PROFILE = {
    "EmptyLatentImage": {"width": 128, "height": 128},
    "EmptySD3LatentImage": {"width": 128, "height": 128},
    "ImageScale": {"width": 128, "height": 128},  # pictures scaled to the frame size
    "STORM_GuidedKSampler": {"steps": 8},
    "STORM_AttentionInterpolation": {"steps": 6},
    "STORM_DynamicInterpolation": {"steps": 4, "exploration_size": 5, "interpolation_size": 4},
    "STORM_ImageMorph": {"steps": 6},
    "KSampler": {"steps": 8},
    "BasicScheduler": {"steps": 8},
}

#: ``client_id`` the runner uses so that the executor sends per-node events to the stub server.
CLIENT_ID = "storm-test-harness"

# LiteGraph node modes
MODE_NEVER = 2  # "muted": not serialised, links from it are dropped
MODE_BYPASS = 4  # inputs pass through to outputs of the same type

#: Frontend-only node types: never sent to the backend.
VIRTUAL_NODE_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
_WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
_UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload")


class WorkflowError(RuntimeError):
    """A workflow cannot be converted, loaded or executed."""


class UnknownNodeTypeError(WorkflowError):
    """The workflow uses node types that no loaded node pack defines."""


class PackImportError(WorkflowError):
    """A custom-node folder failed to import in the host's loader."""


# ============================================================================================
# UI format -> API format


def ui_to_api(ui_workflow: Mapping[str, Any], node_defs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Convert a UI-format workflow to an API-format prompt like the frontend's ``graphToPrompt``.

    Rules implemented:

    * widget values: ``widgets_values`` maps in order onto the node's widget inputs from
      ``INPUT_TYPES`` (required, then optional; INT/FLOAT/STRING/BOOLEAN/COMBO without
      ``forceInput``). An INT named ``seed``/``noise_seed`` or any input with
      ``control_after_generate`` carries one extra value (``"fixed"``, ``"randomize"``...; a COMBO
      carries two: control + filter), an ``image_upload``-style COMBO carries one ("upload").
      These extras are UI-only and skipped. A dict ``widgets_values`` maps by name. List values are
      wrapped as ``{"__value__": [...]}`` as the current frontend does.
    * links: every node input with a link becomes ``[origin_id, origin_slot]`` and overrides the
      widget value of a converted widget. Links are followed through ``Reroute`` nodes and
      **bypassed** (mode 4) nodes (to the bypassed node's input of the same type, preferring the
      input at the output's slot index); a link from a ``PrimitiveNode`` becomes its value.
    * **muted** (mode 2) and bypassed nodes, ``Note``/``MarkdownNote``/``Reroute``/``PrimitiveNode``
      are not emitted; inputs that point at a node missing from the prompt are removed.

    Args:
        ui_workflow: the parsed workflow JSON (``{"nodes": [...], "links": [...], ...}``).
        node_defs: ``class_type -> INPUT_TYPES()`` for every known node (see :func:`node_defs`).

    Returns:
        ``{str(node_id): {"class_type": str, "inputs": {...}, "_meta": {"title": str}}}``.

    Raises:
        UnknownNodeTypeError: a (non-virtual) node type is not in ``node_defs``.
        WorkflowError: the workflow is malformed or ``widgets_values`` does not fit the node.
    """
    nodes = {int(n["id"]): n for n in ui_workflow.get("nodes", [])}
    links = _parse_links(ui_workflow.get("links", []))

    unknown = sorted({n["type"] for n in nodes.values()
                      if n["type"] not in VIRTUAL_NODE_TYPES and n["type"] not in node_defs})
    if unknown:
        hint = ""
        if (ui_workflow.get("definitions") or {}).get("subgraphs"):
            hint = " (the workflow defines subgraphs, which this converter does not expand)"
        raise UnknownNodeTypeError(f"unknown node type(s) {', '.join(unknown)}{hint}")

    prompt: dict[str, dict] = {}
    for node in sorted(nodes.values(), key=lambda n: (n.get("order", 0), int(n["id"]))):
        if node["type"] in VIRTUAL_NODE_TYPES or node.get("mode", 0) in (MODE_NEVER, MODE_BYPASS):
            continue
        inputs = _widget_inputs(node, node_defs[node["type"]])
        for slot in node.get("inputs") or []:
            if slot.get("link") is None:
                continue
            resolved = _resolve_link(nodes, links, slot["link"], slot.get("type"))
            if resolved is _NO_VALUE:
                continue
            if isinstance(resolved, _Constant):
                inputs[slot["name"]] = _wrap_widget_value(resolved.value)
            else:
                inputs[slot["name"]] = list(resolved)
        prompt[str(node["id"])] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node.get("title") or node["type"]},
        }

    for entry in prompt.values():
        for name, value in list(entry["inputs"].items()):
            if _is_link(value) and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt


#: UI-only ``widgets_values`` entries that follow a widget's own value (never sent to the backend).
CONTROL_AFTER_GENERATE = "control_after_generate"
CONTROL_FILTER_LIST = "control_filter_list"
UPLOAD = "upload"


def widget_layout(input_types: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """The entries of a node's ``widgets_values``, in order, as ``(input name, kind)``.

    ``kind`` is None for the widget's own value, else the UI-only value that follows it
    (:data:`CONTROL_AFTER_GENERATE`, :data:`CONTROL_FILTER_LIST`, :data:`UPLOAD`).

    Args:
        input_types: the node class's ``INPUT_TYPES()`` dict.
    """
    layout: list[tuple[str, str | None]] = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            type_, options = _split_input_spec(spec)
            if not _is_widget(type_, options):
                continue
            layout.append((name, None))
            is_combo = not isinstance(type_, str) or type_ == "COMBO"
            if options.get("control_after_generate", type_ == "INT" and name in ("seed", "noise_seed")):
                layout.append((name, CONTROL_AFTER_GENERATE))
                if is_combo:
                    layout.append((name, CONTROL_FILTER_LIST))
            if any(options.get(key) for key in _UPLOAD_OPTIONS):
                layout.append((name, UPLOAD))
    return layout


def widget_slots(input_types: Mapping[str, Any]) -> list[str | None]:
    """The names behind a node's ``widgets_values`` entries, in order; None marks a UI-only value.

    Args:
        input_types: the node class's ``INPUT_TYPES()`` dict.
    """
    return [name if kind is None else None for name, kind in widget_layout(input_types)]


def widget_defaults(input_types: Mapping[str, Any]) -> dict[str, Any]:
    """``name -> declared default`` of a node's widget inputs that declare one."""
    defaults = {}
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            type_, options = _split_input_spec(spec)
            if _is_widget(type_, options) and "default" in options:
                defaults[name] = options["default"]
    return defaults


def widgets_values(input_types: Mapping[str, Any], values: Mapping[str, Any], *,
                   control_after_generate: str = "fixed") -> list[Any]:
    """The ``widgets_values`` list of a node, the inverse of what :func:`ui_to_api` reads.

    Args:
        input_types: the node class's ``INPUT_TYPES()`` dict; it gives the order.
        values: widget values by input name; a widget not given takes its declared default (a
            COMBO without one its first option, as the frontend does).
        control_after_generate: the UI-only value after a seed-like widget.

    Raises:
        WorkflowError: ``values`` names an input that is not a widget of the node, a widget has
            neither a value nor a default, or the node has UI-only values other than
            control_after_generate.
    """
    layout = widget_layout(input_types)
    unknown = sorted(set(values) - {name for name, _ in layout})
    if unknown:
        raise WorkflowError(f"{unknown} are not widget inputs of the node (widgets: {widget_slots(input_types)})")
    defaults = widget_defaults(input_types)
    out: list[Any] = []
    for name, kind in layout:
        if kind == CONTROL_AFTER_GENERATE:
            out.append(control_after_generate)
        elif kind is not None:
            raise WorkflowError(f"input {name!r}: cannot fill the UI-only {kind} value; give widgets_values by "
                                "position")
        elif name in values:
            out.append(values[name])
        elif name in defaults:
            out.append(defaults[name])
        else:
            type_, _ = _split_input_spec(_input_spec(input_types, name))
            if isinstance(type_, (list, tuple)) and type_:
                out.append(type_[0])
            else:
                raise WorkflowError(f"widget {name!r} declares no default: give its value")
    return out


def _input_spec(input_types: Mapping[str, Any], name: str) -> Any:
    for section in ("required", "optional"):
        if name in (input_types.get(section) or {}):
            return input_types[section][name]
    raise KeyError(name)


def substitute_checkpoints(
    api_prompt: Mapping[str, Mapping[str, Any]], *, loaders: Iterable[str] = ("CheckpointLoaderSimple",),
    shape_model: bool = False,
) -> dict[str, dict]:
    """Return a copy of ``api_prompt`` whose checkpoint loaders are ``STORMTest_TinyCheckpointLoader``.

    Only ``class_type`` changes; ``ckpt_name`` (which picks the tiny architecture) and the output
    slots (MODEL, CLIP, VAE) are the same. The core loaders of separate files and the image-prompt nodes
    (``LoadImage``, the IP-Adapter pack's) get their stand-ins (:data:`TINY_FILE_LOADERS`,
    :data:`TINY_IMAGE_PROMPT_NODES`). With ``shape_model``, SD1.5 checkpoints load the shipped
    trained shape model (:data:`harness.tiny_models.SHAPE_MODEL`) instead of random weights.
    """
    from .tiny_models import SHAPE_MODEL, arch_from_checkpoint_name

    loaders = frozenset(loaders)
    out = json.loads(json.dumps(api_prompt))
    for entry in out.values():
        if entry.get("class_type") in loaders:
            name = entry.get("inputs", {}).get("ckpt_name", "tiny_sd15.safetensors")
            if shape_model and arch_from_checkpoint_name(name) == "sd15":
                name = SHAPE_MODEL.name
            entry["class_type"] = TINY_LOADER
            entry["inputs"] = {"ckpt_name": name}
        elif entry.get("class_type") in TINY_FILE_LOADERS:  # a family shipped as separate files
            entry["class_type"], keep = TINY_FILE_LOADERS[entry["class_type"]]
            entry["inputs"] = {k: v for k, v in entry.get("inputs", {}).items() if k in keep}
        elif entry.get("class_type") in TINY_IMAGE_PROMPT_NODES:  # an image prompt (picture, IP-Adapter)
            entry["class_type"], keep = TINY_IMAGE_PROMPT_NODES[entry["class_type"]]
            entry["inputs"] = {k: v for k, v in entry.get("inputs", {}).items() if k in keep}
    return out


class _Constant:
    """A link that resolves to a literal value (PrimitiveNode)."""

    def __init__(self, value: Any) -> None:
        self.value = value


_NO_VALUE = object()


@dataclasses.dataclass(frozen=True)
class _Link:
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int
    type: Any


def _parse_links(raw: Iterable[Any]) -> dict[int, _Link]:
    links: dict[int, _Link] = {}
    for item in raw or []:
        if isinstance(item, Mapping):  # newer schema: objects
            link_id = item["id"]
            fields = (item["origin_id"], item["origin_slot"], item["target_id"], item["target_slot"], item.get("type"))
        else:  # [id, origin_id, origin_slot, target_id, target_slot, type]
            link_id, *rest = item
            fields = tuple(rest[:5]) if len(rest) >= 5 else (*rest[:4], None)
        links[int(link_id)] = _Link(int(fields[0]), int(fields[1]), int(fields[2]), int(fields[3]), fields[4])
    return links


def _resolve_link(nodes: Mapping[int, dict], links: Mapping[int, _Link], link_id: int, wanted_type: Any) -> Any:
    """Follow ``link_id`` to the node that really produces the value.

    Returns ``(origin_id, slot)``, a :class:`_Constant`, or ``_NO_VALUE`` when nothing feeds it.
    """
    seen: set[int] = set()
    while True:
        if link_id in seen:
            raise WorkflowError(f"link cycle through link {link_id}")
        seen.add(link_id)
        link = links.get(int(link_id))
        if link is None:
            return _NO_VALUE
        origin = nodes.get(link.origin_id)
        if origin is None:
            return _NO_VALUE
        if origin["type"] == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            return _Constant(values[0]) if values else _NO_VALUE
        if origin["type"] == "Reroute":
            next_link = _input_link(origin, 0)
        elif origin.get("mode", 0) == MODE_BYPASS:
            next_link = _bypass_input_link(origin, link.origin_slot, wanted_type)
        else:
            return (str(link.origin_id), link.origin_slot)
        if next_link is None:
            return _NO_VALUE
        link_id = next_link


def _input_link(node: Mapping[str, Any], index: int) -> int | None:
    inputs = node.get("inputs") or []
    return inputs[index].get("link") if index < len(inputs) else None


def _bypass_input_link(node: Mapping[str, Any], output_slot: int, wanted_type: Any) -> int | None:
    """The link into a bypassed node that replaces its output ``output_slot`` of ``wanted_type``."""
    inputs = node.get("inputs") or []
    for index in [output_slot, *range(len(inputs))]:
        if index < len(inputs) and _types_match(inputs[index].get("type"), wanted_type):
            return inputs[index].get("link")
    return None


def _types_match(a: Any, b: Any) -> bool:
    return a == b or a == "*" or b == "*" or b in (None, "")


def _widget_inputs(node: Mapping[str, Any], input_types: Mapping[str, Any]) -> dict[str, Any]:
    values = node.get("widgets_values")
    slots = widget_slots(input_types)
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return {name: _wrap_widget_value(values[name]) for name in slots if name is not None and name in values}
    if len(values) != len(slots):
        raise WorkflowError(
            f"node {node['id']} ({node['type']}): {len(values)} widgets_values {values!r} do not fit its "
            f"{len(slots)} widget slots {slots!r} (None = UI-only value such as control_after_generate)"
        )
    return {name: _wrap_widget_value(value) for name, value in zip(slots, values, strict=True) if name is not None}


def _wrap_widget_value(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def _split_input_spec(spec: Any) -> tuple[Any, Mapping[str, Any]]:
    if isinstance(spec, (list, tuple)) and spec:
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
        return spec[0], options
    return spec, {}


def _is_widget(type_: Any, options: Mapping[str, Any]) -> bool:
    if options.get("forceInput"):
        return False
    return isinstance(type_, (list, tuple)) or type_ in _WIDGET_TYPES


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


# ============================================================================================
# execution


@dataclasses.dataclass
class RunResult:
    """Outcome of one queued prompt.

    Attributes:
        prompt_id: the id the prompt ran under.
        success: validation passed and every node executed.
        outputs_ui: ``node_id -> ui dict`` (``{"images": [{"filename", "subfolder", "type"}], ...}``,
            plus any extra keys a node returns), as ``/history/<id>["outputs"]`` would show it.
        status_messages: ``(event, data)`` status messages of the executor (``execution_start``,
            ``execution_cached``, ``execution_success`` / ``execution_error``...).
        events: ``(event, data)`` messages sent to the stub server (``executing``, ``executed``,
            ``progress``...); binary preview events are not kept.
        error: readable validation or execution error (with traceback), None on success.
        node_errors: the host's per-node validation errors (``{node_id: {"errors": [...], ...}}``).
        output_dir / temp_dir: where ``type: "output"`` / ``"temp"`` files of this run are.
    """

    prompt_id: str
    success: bool
    outputs_ui: dict[str, dict]
    status_messages: list[tuple[str, dict]]
    events: list[tuple[str, dict]]
    error: str | None
    node_errors: dict[str, Any]
    output_dir: Path
    temp_dir: Path

    @property
    def executed_nodes(self) -> list[str]:
        """Node ids the executor ran in this prompt (not served from cache), in order."""
        return [str(d["node"]) for e, d in self.events if e == "executing" and d.get("node") is not None]

    @property
    def cached_nodes(self) -> list[str]:
        """Node ids whose outputs the executor reported as cached at the start of this prompt."""
        for event, data in self.status_messages:
            if event == "execution_cached":
                return [str(n) for n in data.get("nodes", [])]
        return []

    def file_paths(self, node_id: str | None = None, key: str = "images") -> list[Path]:
        """Paths of the files listed under ``outputs_ui[...][key]`` (all output nodes if no id)."""
        roots = {"output": self.output_dir, "temp": self.temp_dir}
        paths: list[Path] = []
        for nid, ui in self.outputs_ui.items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            for item in ui.get(key, []) or []:
                if isinstance(item, Mapping) and "filename" in item:
                    root = roots.get(item.get("type", "output"), self.output_dir)
                    paths.append(root / item.get("subfolder", "") / item["filename"])
        return paths

    def raise_for_error(self) -> None:
        """Raise :class:`WorkflowError` with the error text if the run failed."""
        if not self.success:
            raise WorkflowError(self.error or "prompt failed")


class HeadlessServer:
    """The part of ``PromptServer`` that ``PromptExecutor`` uses; records what it is sent."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.receive_all_progress_notifications = True
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        if isinstance(event, str) and isinstance(data, Mapping):
            self.messages.append((event, dict(data)))

    def queue_updated(self) -> None:
        pass


class WorkflowRunner:
    """One in-process ComfyUI "server": loaded nodes, folders and a single ``PromptExecutor``.

    Use :func:`get_runner` to share one per process; constructing a second runner in a process
    is refused because the hosts load nodes into process-global registries.
    """

    _instantiated = False

    def __init__(self, base_dir: str | os.PathLike | None = None) -> None:
        """Create the base directory, load all nodes and the two packs, build the executor.

        Args:
            base_dir: directory for ``custom_nodes/``, ``input/``, ``output/``, ``temp/``,
                ``user/``, ``models/``; a temporary directory (removed at exit) when None.

        Raises:
            PackImportError: the ComfyUI-STORM pack or ``tiny_nodes`` failed to import.
            WorkflowError: a runner already exists in this process.
        """
        if WorkflowRunner._instantiated:
            raise WorkflowError("only one WorkflowRunner per process; use harness.workflows.get_runner()")
        self.host: HostInfo = ensure_host()
        if base_dir is None:
            base = Path(tempfile.mkdtemp(prefix="storm-comfy-"))
            atexit.register(shutil.rmtree, base, ignore_errors=True)
        else:
            base = Path(base_dir).resolve()
        self.base_dir = base
        self.custom_nodes_dir = base / "custom_nodes"
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        _link_folder(self.custom_nodes_dir / PACK_FOLDER, REPO_ROOT)
        _link_folder(self.custom_nodes_dir / TINY_NODES_FOLDER, TINY_NODES_DIR)

        self._host = _Host()
        self._host.prepare_folders(base)
        pack_dirs = [self.custom_nodes_dir / PACK_FOLDER, self.custom_nodes_dir / TINY_NODES_FOLDER]
        self._host.load_nodes(self.custom_nodes_dir, pack_dirs)
        if TINY_LOADER not in self._host.class_mappings():
            raise PackImportError(f"{TINY_LOADER} is not registered after loading {TINY_NODES_DIR}")
        self.server = HeadlessServer()
        self.executor = self._host.make_executor(self.server)
        self._node_defs: dict[str, dict] | None = None
        WorkflowRunner._instantiated = True
        logger.info("workflow runner ready (ComfyUI %s), base dir %s", self.host.version, base)

    @property
    def output_dir(self) -> Path:
        return Path(self._host.folder_paths().get_output_directory())

    @property
    def temp_dir(self) -> Path:
        return Path(self._host.folder_paths().get_temp_directory())

    @property
    def input_dir(self) -> Path:
        return Path(self._host.folder_paths().get_input_directory())

    def class_mappings(self) -> Mapping[str, type]:
        """``class_type -> node class`` for every node the host has loaded."""
        return self._host.class_mappings()

    def node_defs(self) -> dict[str, dict]:
        """``class_type -> INPUT_TYPES()`` for every loaded node (cached; failing nodes are skipped)."""
        if self._node_defs is None:
            defs: dict[str, dict] = {}
            for name, cls in self.class_mappings().items():
                try:
                    defs[name] = cls.INPUT_TYPES()
                except Exception as exc:  # a broken third-party node must not break conversion
                    logger.warning("INPUT_TYPES of %s failed: %s", name, exc)
            self._node_defs = with_third_party_defs(defs)
        return self._node_defs

    def validate(self, api_prompt: Mapping[str, Any]) -> tuple[bool, str | None, dict[str, Any]]:
        """Validate ``api_prompt`` like a queued ``POST /prompt`` without executing it.

        Returns:
            ``(ok, readable error or None, the host's per-node errors)``.
        """
        ok, error, _, node_errors = self._host.validate(str(uuid.uuid4()), json.loads(json.dumps(api_prompt)))
        return ok, None if ok else format_validation_error(error, node_errors), dict(node_errors or {})

    def run(self, api_prompt: Mapping[str, Any], *, extra_data: Mapping[str, Any] | None = None) -> RunResult:
        """Validate and execute ``api_prompt`` like a queued ``POST /prompt``.

        Validation errors and node exceptions come back in the result (``success=False``,
        ``error``); they do not raise. Cached outputs from earlier runs are reused as in a server.

        Args:
            api_prompt: API-format prompt ``{node_id: {"class_type", "inputs"}}``.
            extra_data: the request's ``extra_data`` (e.g. ``{"extra_pnginfo": {"workflow": ...}}``).
        """
        prompt = json.loads(json.dumps(api_prompt))
        prompt_id = str(uuid.uuid4())
        ok, error, outputs, node_errors = self._host.validate(prompt_id, prompt)
        if not ok:
            text = format_validation_error(error, node_errors)
            logger.info("prompt %s failed validation: %s", prompt_id, text)
            return RunResult(prompt_id, False, {}, [], [], text, dict(node_errors or {}),
                             self.output_dir, self.temp_dir)

        data = {**(extra_data or {}), "client_id": CLIENT_ID}
        self.server.messages = []
        self.server.last_prompt_id = prompt_id
        self.executor.execute(prompt, prompt_id, data, outputs)
        status = list(self.executor.status_messages)
        success = bool(self.executor.success)
        text = None if success else format_execution_error(status)
        if text:
            logger.info("prompt %s failed: %s", prompt_id, text)
        return RunResult(prompt_id, success, self._host.ui_outputs(self.executor), status,
                         list(self.server.messages), text, dict(node_errors or {}),
                         self.output_dir, self.temp_dir)

    def reset_cache(self) -> None:
        """Forget all cached node outputs (what ``POST /free {"free_memory": true}`` does)."""
        self.executor.reset()


_runner: WorkflowRunner | None = None


def get_runner(base_dir: str | os.PathLike | None = None) -> WorkflowRunner:
    """The process-wide :class:`WorkflowRunner`, created on first use.

    Raises:
        WorkflowError: ``base_dir`` differs from the existing runner's base directory.
    """
    global _runner
    if _runner is None:
        _runner = WorkflowRunner(base_dir)
    elif base_dir is not None and Path(base_dir).resolve() != _runner.base_dir:
        raise WorkflowError(f"the workflow runner already uses {_runner.base_dir}, not {base_dir}")
    return _runner


def run_prompt(api_prompt: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None,
               extra_data: Mapping[str, Any] | None = None) -> RunResult:
    """Execute an API-format prompt with the process-wide runner (see :meth:`WorkflowRunner.run`)."""
    return get_runner(base_dir).run(api_prompt, extra_data=extra_data)


def node_defs() -> dict[str, dict]:
    """``class_type -> INPUT_TYPES()`` for every node loaded by the process-wide runner."""
    return get_runner().node_defs()


def load_ui_workflow(path: str | os.PathLike) -> dict:
    """Read a UI-format workflow JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_ui_workflow(ui_workflow: Mapping[str, Any] | str | os.PathLike, *, tiny: bool = True) -> RunResult:
    """Convert a UI-format workflow (dict or file), optionally substitute tiny checkpoints, run it.

    The UI workflow is passed as ``extra_pnginfo.workflow``, as the frontend does.
    """
    workflow = ui_workflow if isinstance(ui_workflow, Mapping) else load_ui_workflow(ui_workflow)
    runner = get_runner()
    prompt = ui_to_api(workflow, runner.node_defs())
    if tiny:
        prompt = substitute_checkpoints(prompt)
    return runner.run(prompt, extra_data={"extra_pnginfo": {"workflow": workflow}})


def format_validation_error(error: Any, node_errors: Mapping[str, Any] | None) -> str:
    """One readable text from the host's ``validate_prompt`` error and per-node errors."""
    lines = []
    if isinstance(error, Mapping):
        lines.append(f"prompt validation failed: {error.get('message', '')}: {error.get('details', '')}".rstrip(": "))
    elif error:
        lines.append(f"prompt validation failed: {error}")
    for node_id, info in (node_errors or {}).items():
        for err in info.get("errors", []):
            lines.append(f"  node {node_id} ({info.get('class_type')}): {err.get('message')}: {err.get('details')}")
    return "\n".join(lines) or "prompt validation failed"


def format_execution_error(status_messages: Iterable[tuple[str, Mapping[str, Any]]]) -> str:
    """The ``execution_error`` / ``execution_interrupted`` status message as readable text."""
    for event, data in status_messages:
        if event == "execution_error":
            tb = "".join(data.get("traceback") or [])
            return (f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                    f"{data.get('exception_type')}: {data.get('exception_message')}\n{tb}").rstrip()
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return "prompt failed without an execution_error message"


def _link_folder(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        raise WorkflowError(f"{link} exists and does not point at {target}")
    os.symlink(target, link, target_is_directory=True)


# ============================================================================================
# the host's own entry points: every host call lives here


def _redirect_folders(folder_paths: Any, base: Path) -> None:
    """Point the host's input/output/temp (and user, if supported) folders into ``base``."""
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    folder_paths.set_input_directory(str(base / "input"))
    if hasattr(folder_paths, "set_user_directory"):
        folder_paths.set_user_directory(str(base / "user"))


class _Host:
    """The host calls the runner makes (ComfyUI 0.3.64 to 0.33 and later)."""

    def prepare_folders(self, base: Path) -> None:
        import comfy.cli_args

        if "folder_paths" not in sys.modules:
            comfy.cli_args.args.base_directory = str(base)
        fp = self.folder_paths()
        _redirect_folders(fp, base)
        fp.add_model_folder_path("custom_nodes", str(base / "custom_nodes"))

    def folder_paths(self) -> Any:
        return importlib.import_module("folder_paths")

    def load_nodes(self, custom_nodes_dir: Path, pack_dirs: list[Path]) -> None:
        nodes = importlib.import_module("nodes")
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        base_node_names = set(nodes.NODE_CLASS_MAPPINGS)
        for path in pack_dirs:
            with _captured_logs() as records:
                ok = asyncio.run(nodes.load_custom_node(str(path), base_node_names, module_parent="custom_nodes"))
            if not ok:
                raise PackImportError(f"ComfyUI could not import {path}:\n" + "\n".join(records))
            logger.info("loaded custom nodes from %s", path)

    def class_mappings(self) -> Mapping[str, type]:
        return importlib.import_module("nodes").NODE_CLASS_MAPPINGS

    def make_executor(self, server: HeadlessServer) -> Any:
        execution = importlib.import_module("execution")
        params = inspect.signature(execution.PromptExecutor).parameters
        kwargs: dict[str, Any] = {"cache_type": execution.CacheType.CLASSIC}
        if "cache_args" in params:  # 0.33 replaced cache_size by cache_args; the keys main.py
            # passes (0.33 reads "ram_inactive" at every prompt)
            kwargs["cache_args"] = {"lru": 0, "ram": 0, "ram_inactive": 0}
        return execution.PromptExecutor(server, **kwargs)

    def validate(self, prompt_id: str, prompt: dict) -> tuple[bool, Any, list, dict]:
        execution = importlib.import_module("execution")
        result = execution.validate_prompt(prompt_id, prompt, None)
        if inspect.isawaitable(result):
            result = asyncio.run(result)
        ok, error, outputs, node_errors = result
        return bool(ok), error, list(outputs), dict(node_errors or {})

    def ui_outputs(self, executor: Any) -> dict[str, dict]:
        return dict(getattr(executor, "history_result", {}).get("outputs", {}))


@contextlib.contextmanager
def _captured_logs(level: int = logging.WARNING):
    """Collect formatted log records of ``level`` and above emitted inside the block."""
    records: list[str] = []

    class _Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = _Collector(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)
