"""Write the help page of every node, ``web/docs/<node id>.md``, from the nodes themselves.

The ComfyUI frontend shows ``/extensions/<pack>/docs/<node id>.md`` in its node help panel (and
``web/`` is served at ``/extensions/<pack>/``). Every fact on a page comes from its owner: the
description, the search aliases, the inputs (type, default, range, tooltip) and outputs (tooltip)
from the node class, the workflows that use the node from ``example_workflows/``. A workflow test
checks that the pages are up to date:

    python -m scripts.build_node_docs
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.host import REPO_ROOT, load_pack
from harness.workflows import example_files

OUT = REPO_ROOT / "web" / "docs"
README_NODES = "https://github.com/comfyui-storm/ComfyUI-STORM#nodes"


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _host_lists() -> dict[tuple, str]:
    """Choice lists that come from the host (they differ between ComfyUI versions): named, not listed."""
    import comfy.samplers

    return {tuple(comfy.samplers.KSampler.SAMPLERS): "one of ComfyUI's samplers",
            tuple(comfy.samplers.KSampler.SCHEDULERS): "one of ComfyUI's schedulers"}


def _input_row(name: str, spec, optional: bool) -> str:
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(kind, (list, tuple)) and tuple(kind) in _host_lists():
        type_ = _host_lists()[tuple(kind)]
    elif isinstance(kind, (list, tuple)):
        type_ = "choice: " + ", ".join(f"`{c}`" for c in kind)
    else:
        type_ = str(kind)
    default = options.get("default")
    facts = []
    if default is not None and default != "":
        facts.append(f"default `{_cell(default)}`")
    if "min" in options or "max" in options:
        facts.append(f"range {options.get('min', '')}..{options.get('max', '')}")
    if optional:
        facts.append("optional")
    return f"| `{name}` | {_cell(type_)} | {_cell('; '.join(facts))} | {_cell(options.get('tooltip', ''))} |"


def _used_in(node_id: str) -> list[str]:
    names = []
    for path in example_files():
        if any(n.get("type") == node_id for n in json.loads(path.read_text())["nodes"]):
            names.append(path.name)
    return names


def page(node_id: str, cls) -> str:
    """The markdown help page of one node class."""
    lines = [f"# {cls.NODE_NAME}", "", _cell(cls.DESCRIPTION), ""]
    aliases = getattr(cls, "SEARCH_ALIASES", ())
    if aliases:
        lines += [f"Search for it as: {', '.join(aliases)}.", ""]
    spec = cls.INPUT_TYPES()
    lines += ["## Inputs", "", "| input | type | | what it does |", "| --- | --- | --- | --- |"]
    for section in ("required", "optional"):
        for name, value in (spec.get(section) or {}).items():
            lines.append(_input_row(name, value, section == "optional"))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    tips = getattr(cls, "OUTPUT_TOOLTIPS", None) or ("",) * len(cls.RETURN_TYPES)
    if cls.RETURN_TYPES:
        lines += ["", "## Outputs", "", "| output | type | what it is |", "| --- | --- | --- |"]
        for name, type_, tip in zip(names, cls.RETURN_TYPES, tips, strict=True):
            lines.append(f"| `{name}` | {type_} | {_cell(tip)} |")
    used = _used_in(node_id)
    lines += ["", "## Example workflows", ""]
    lines += [f"- *{Path(n).stem}* (in the template browser; the file `example_workflows/{n}`)" for n in used] or [
        "None uses this node yet."]
    lines += ["", f"More: the README's [Nodes]({README_NODES}) section, with the defaults and why.", ""]
    return "\n".join(lines)


def build_all(out: Path = OUT) -> list[Path]:
    """Write every node's page into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for node_id, cls in load_pack().NODE_CLASS_MAPPINGS.items():
        path = out / f"{node_id}.md"
        path.write_text(page(node_id, cls))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in build_all():
        print(f"wrote {path}")
