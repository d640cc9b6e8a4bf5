"""Check the pack in the real ComfyUI frontend (developer check, not part of CI).

Starts an upstream ComfyUI server on 127.0.0.1 with ComfyUI-STORM and the test-only tiny checkpoint
loader (``harness/tiny_nodes``), opens it in headless Chromium and, for every example workflow:

1. loads it with ``app.loadGraphData`` and compares the frontend's ``app.graphToPrompt()`` with the
   test harness' ``ui_to_api`` (which the workflow tests rely on);
2. loads its tiny version (the workflow tests' stand-ins: ``STORMTest_TinyCheckpointLoader``, the tiny UNET, CLIP
   and VAE loaders, the picture loader and the IP-Adapter pack's nodes; 128x128, few steps), compares again,
   queues it from the page (``app.queuePrompt``), waits for ``/history/<prompt_id>`` and requires
   ``status_str == "success"``, saved images, and the STORM text boxes (``web/storm.js``) filled with
   the text the nodes reported;
   It also requires that no two nodes overlap (as loaded and after the run), that the loss charts
   have a point per guided step and the heatmap view a tab per token and a working step scrubber;
3. screenshots the page (``<out>/<name>.png`` loaded, ``<out>/run_<name>.png`` after the run) and keeps
   the history entry (``<out>/run_<name>.history.json``) and the server log (``<out>/server.log``).

Before the examples: node search by task ("morph", "placement", "heatmap"), the node help pages, and
the token chips of Subject Tokens (clicks change ``subjects`` and the run uses them; on the DiT examples and with
other loaders on ``clip``, the rows of that family's conditioning). ``--vue-nodes`` repeats everything with the Vue
node renderer on. The IP-Adapter pack is not installed: its nodes in an example are left out of the as-loaded
comparison and overlap check (the frontend has no definition for them) and checked as their stand-ins.

Page errors and console errors or warnings that name the extension (``/extensions/ComfyUI-STORM/``, e.g.
the frontend's "Uncaught error in event listener" warning with a storm.js stack) fail the example; other
page and console errors are listed once as notes.
Exit status: 0 all passed, 1 an example failed (load, difference, error, timeout), 2 setup problem.

Needs: COMFYUI_PATH (an upstream checkout) whose Python environment has ComfyUI's requirements.txt plus
``pip install -U comfyui-frontend-package playwright`` (keep the workflow-templates version ComfyUI pins:
newer ones stop ComfyUI 0.3.64 from starting). No ``playwright install``: a system Chromium is used
(Debian: ``apt-get install chromium``; ``--chromium PATH`` for another). Run with that environment's Python:

    COMFYUI_PATH=/path/to/ComfyUI python -m scripts.check_frontend --out frontend-check [--only astar]

(from the repository root: the ``scripts`` package imports the test harness).
"""

from __future__ import annotations

import argparse
import base64
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness.workflows import EXAMPLES, PACK_FOLDER, example_path, select_examples, with_third_party_defs

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
HTTP_ERROR = re.compile(r"console.error: Failed to load resource: the server responded with a status of (\d+) .*\((.*)\)$")
OUR_SCRIPT = "/extensions/ComfyUI-STORM/"  # where the server serves web/storm.js


def start_server(comfyui: Path, port: int, base: Path, log_path: Path) -> subprocess.Popen:
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(ROOT)
    (base / "custom_nodes" / "storm_test_tiny_nodes").symlink_to(ROOT / "harness" / "tiny_nodes")
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--disable-auto-launch", "--base-directory", str(base),
                             "--database-url", "sqlite:///:memory:", "--disable-api-nodes"],
                            cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(180):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info/STORM_SubjectTokens", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"the server did not start; see {log_path}")


def get_json(url: str, data: dict | None = None) -> dict:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read() or b"{}")


def tiny_version(workflow: dict, node_defs: dict) -> dict:
    """The workflow with the stand-ins the workflow tests run it with (``harness.workflows``: the tiny loader for a
    checkpoint, ``TINY_FILE_LOADERS`` for separate model, text-encoder and VAE files, ``TINY_IMAGE_PROMPT_NODES``
    for pictures and the IP-Adapter pack's nodes) and ``CPU_PROFILE``; widgets found by name, not position."""
    from harness.workflows import (
        CPU_PROFILE,
        THIRD_PARTY_NODES,
        TINY_FILE_LOADERS,
        TINY_IMAGE_PROMPT_NODES,
        TINY_LOADER,
        widget_slots,
    )

    stand_ins = {"CheckpointLoaderSimple": TINY_LOADER,
                 **{name: entry[0] for name, entry in {**TINY_FILE_LOADERS, **TINY_IMAGE_PROMPT_NODES}.items()}}
    wf = json.loads(json.dumps(workflow))
    for node in wf["nodes"]:
        if node["type"] in stand_ins:  # the stand-in's widgets are the original's it reads, by name
            values = dict(zip(widget_slots(node_defs.get(node["type"], {})), node.get("widgets_values") or [], strict=True))
            if node["type"] in THIRD_PARTY_NODES:  # drawn as the pack's node (its type, as the frontend's placeholder
                node.setdefault("title", node["type"])  # names it), not as the stand-in's longer, wider name
            node["type"] = stand_ins[node["type"]]
            node["widgets_values"] = [values.get(name) for name in widget_slots(node_defs.get(node["type"], {}))]
        slots = widget_slots(node_defs.get(node["type"], {}))
        for name, value in CPU_PROFILE.get(node["type"], {}).items():
            node["widgets_values"][slots.index(name)] = value
    return wf


def load_and_compare(page, workflow: dict, node_defs: dict, absent: frozenset[str] = frozenset()) -> str | None:
    """Load ``workflow`` in the page; None if graphToPrompt equals ui_to_api, else what differs. Nodes of the types
    in ``absent`` (another pack's, not installed: the frontend has no definition, so no class or input names) are
    left out of the comparison."""
    from harness.workflows import ui_to_api

    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    page.evaluate("async () => { await app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
    page.wait_for_timeout(1000)
    skipped = {str(n["id"]) for n in workflow["nodes"] if n["type"] in absent}
    frontend = page.evaluate("async () => (await app.graphToPrompt()).output")
    frontend = {k: (v["class_type"], v["inputs"]) for k, v in frontend.items() if k not in skipped}
    expected = {k: (v["class_type"], v["inputs"]) for k, v in ui_to_api(workflow, node_defs).items()
                if k not in skipped}
    diff = sorted(k for k in frontend.keys() | expected.keys() if frontend.get(k) != expected.get(k))
    return None if not diff else "graphToPrompt differs from ui_to_api at node(s) " + ", ".join(
        f"{k}: {frontend.get(k)} != {expected.get(k)}" for k in diff)


def queue_and_wait(page, url: str, timeout: float) -> tuple[str | None, dict]:
    """Queue the loaded graph from the page; (error or None, the /history entry)."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt")) as posted:
        page.evaluate("async () => { try { await app.queuePrompt(0, 1); } catch (e) { return String(e); } }")
    reply = posted.value.json()
    if not posted.value.ok or "prompt_id" not in reply:
        return f"the server rejected the prompt: {json.dumps(reply)[:2000]}", {}
    prompt_id, deadline = reply["prompt_id"], time.monotonic() + timeout
    while (entry := get_json(f"{url}/history/{prompt_id}").get(prompt_id)) is None:
        if time.monotonic() > deadline:
            get_json(f"{url}/queue", {"delete": [prompt_id]})
            get_json(f"{url}/interrupt", {"prompt_id": prompt_id})
            return f"prompt {prompt_id} timed out after {timeout:.0f} s", {}
        time.sleep(1)
    status = entry.get("status") or {}
    if status.get("status_str") == "success" and status.get("completed"):
        return None, entry
    for event, data in status.get("messages") or []:
        if event == "execution_error":
            return (f"prompt {prompt_id}: node {data.get('node_id')} ({data.get('node_type')}) raised "
                    f"{data.get('exception_type')}: {data.get('exception_message')}".rstrip()), entry
    return f"prompt {prompt_id} ended with status {json.dumps(status)[:2000]}", entry


def check_outputs(page, entry: dict) -> str | None:
    """Saved images exist and every STORM text output is shown by web/storm.js in its node."""
    outputs = entry.get("outputs") or {}
    if not any(out.get("images") for out in outputs.values()):
        return "the run saved no images"
    texts = {node_id: "\n".join(out.get("storm_text") or out.get("storm_log")) for node_id, out in outputs.items()
             if out.get("storm_text") or out.get("storm_log")}
    shown = page.evaluate("""(ids) => Object.fromEntries(ids.map((id) => [id, app.graph.getNodeById(Number(id))
        ?.widgets?.find((w) => w.name === "storm_display")?.element?.value ?? null]))""", list(texts))
    wrong = [node_id for node_id, text in texts.items() if shown.get(node_id) != text]
    if wrong:
        return f"web/storm.js did not show the reported text in node(s) {', '.join(wrong)}"
    steps = {node_id: out["storm_steps"] for node_id, out in outputs.items() if out.get("storm_steps")}
    charts = page.evaluate("""(ids) => Object.fromEntries(ids.map((id) => [id, [...(app.graph.getNodeById(Number(id))
        ?.widgets?.find((w) => w.name === "storm_chart")?.element?.querySelectorAll("svg.storm-loss-chart") ?? [])]
        .map((svg) => [svg.dataset.term, svg.querySelector("polyline").getAttribute("points").split(" ").length,
                       svg.querySelectorAll("circle.storm-loss-refined").length])]))""", list(steps))
    for node_id, log in steps.items():
        terms = sorted({t for e in log for t in e["terms_before"]})
        expected = [[t, len(log), sum(1 for e in log if e["refine_iters"])] for t in terms]
        if sorted(charts.get(node_id) or []) != expected:
            return f"loss chart of node {node_id}: {charts.get(node_id)}, expected (term, points, refined) {expected}"
    for node_id, out in outputs.items():
        if not out.get("storm_maps"):
            continue
        maps = out["storm_maps"][0]
        view = page.evaluate("""async (id) => { const node = app.graph.getNodeById(Number(id));
            const box = node.widgets.find((w) => w.name === "storm_view").element;
            const canvas = box.querySelector("canvas.storm-view-map"), slider = box.querySelector("input.storm-view-step");
            const toggle = box.querySelector("input.storm-view-overlay");
            for (let i = 0; i < 40 && node.stormView.photo && !node.stormView.photo.complete; i++) {
                await new Promise((r) => setTimeout(r, 50));
            }
            const overlaid = [canvas.width, canvas.height];
            if (toggle) { toggle.click(); }
            const before = canvas.toDataURL();
            box.querySelectorAll("button.storm-view-token")[box.querySelectorAll("button.storm-view-token").length - 1].click();
            slider.value = 0; slider.dispatchEvent(new Event("input"));
            const changed = canvas.toDataURL() !== before;
            const pixel = [...canvas.getContext("2d").getImageData(0, 0, 1, 1).data.slice(0, 3)];
            canvas.click();
            return {tabs: [...box.querySelectorAll("button.storm-view-token")].map((b) => b.textContent),
                    size: [canvas.width, canvas.height], steps: Number(slider.max) + 1, changed,
                    enlarged: canvas.parentElement.style.height, overlaid: toggle ? overlaid : null, pixel}; }""", node_id)
        drawn = view.pop("pixel")
        colour = map_colour(maps, len(maps["labels"]) - 1, 0)
        if max(abs(a - b) for a, b in zip(drawn, colour, strict=True)) > 1:
            return f"heatmap view of node {node_id}: its first pixel is {drawn}, the node's colormap gives {colour}"
        expected = {"tabs": maps["labels"], "size": [maps["width"], maps["height"]], "steps": len(maps["sigmas"]),
                    "changed": True, "enlarged": "300px",
                    # with an image, the map is first drawn over it at the image's size; the toggle turns it off
                    "overlaid": [maps["image_width"], maps["image_height"]] if "image" in maps else None}
        if view != expected:
            return f"heatmap view of node {node_id}: {view}, expected {expected}"
    return None


def map_colour(maps: dict, token: int, step: int) -> list[int]:
    """The colour the node's colormap (its stops in the payload, the grid image's) gives the top-left value of
    the map of ``token`` at ``step`` (each map scaled to its maximum, as the view draws it)."""
    size = maps["height"] * maps["width"]
    raw = base64.b64decode(maps["data"])
    start = (token * len(maps["sigmas"]) + step) * size
    values = raw[start:start + size]
    x = values[0] / (max(values) or 1) * (len(maps["colormap"]) - 1)
    lo = min(int(x), len(maps["colormap"]) - 2)
    t = x - lo
    return [round(255 * (a * (1 - t) + b * t)) for a, b in zip(maps["colormap"][lo], maps["colormap"][lo + 1], strict=True)]


def overlapping_nodes(page, skip: frozenset[int] = frozenset()) -> list[str]:
    """Pairs of nodes whose drawn boxes (title bar included) overlap on the canvas, as 'A / B'; the nodes whose ids
    are in ``skip`` are left out (a pack not installed: the frontend draws a placeholder of its own size)."""
    boxes = page.evaluate("""(skip) => app.graph._nodes.filter((n) => !skip.includes(String(n.id))).map((n) => {
        const title = LiteGraph.NODE_TITLE_HEIGHT ?? 30;
        return [n.title, n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]; })""",
        sorted(map(str, skip)))  # ids are strings in some frontends, numbers in others
    found = []
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1:]:
            if min(ax1, bx1) - max(ax0, bx0) > 1 and min(ay1, by1) - max(ay0, by0) > 1:
                found.append(f"{a} (x {ax0:.0f}..{ax1:.0f}, y {ay0:.0f}..{ay1:.0f}) / "
                             f"{b} (x {bx0:.0f}..{bx1:.0f}, y {by0:.0f}..{by1:.0f})")
    return found


def check_example(page, url: str, path: Path, node_defs: dict, out: Path, timeout: float,
                  absent: frozenset[str] = frozenset()) -> tuple[str | None, str]:
    """(error or None, a one-line summary) for one example workflow. Nodes of the types in ``absent`` (the IP-Adapter
    pack's, not installed) are compared in the tiny version only, where their stand-ins replace them."""
    workflow = json.loads(path.read_text())
    error = load_and_compare(page, workflow, node_defs, absent)
    page.screenshot(path=str(out / f"{path.stem}.png"))
    if error:
        return error, "load"
    # placeholders of absent nodes are left out here; their stand-ins (the pack's inputs) are in the run's check
    overlaps = overlapping_nodes(page, frozenset(n["id"] for n in workflow["nodes"] if n["type"] in absent))
    if overlaps:
        return "as loaded, nodes overlap: " + "; ".join(overlaps), "load"
    error = load_and_compare(page, tiny_version(workflow, node_defs), node_defs)
    if error:
        return f"tiny version: {error}", "load"
    start = time.monotonic()
    error, entry = queue_and_wait(page, url, timeout)
    seconds = time.monotonic() - start
    page.wait_for_timeout(1500)  # let the frontend draw the last results
    page.screenshot(path=str(out / f"run_{path.stem}.png"))
    overlaps = overlapping_nodes(page)
    if overlaps and not error:
        error = "after the run, nodes overlap: " + "; ".join(overlaps)
    (out / f"run_{path.stem}.history.json").write_text(json.dumps(entry, indent=1))
    images = sum(len(o.get("images") or []) for o in (entry.get("outputs") or {}).values())
    uninstalled = sorted(n["type"] for n in workflow["nodes"] if n["type"] in absent)
    return error or check_outputs(page, entry), f"ran in {seconds:.1f} s, {images} image(s)" + (
        f"; {len(uninstalled)} node(s) of a pack not installed ({', '.join(sorted(set(uninstalled)))}) "
        "compared as their stand-ins only" if uninstalled else "")


#: node search queries and the node each must find (aliases: SEARCH_ALIASES, web/storm.js)
SEARCHES = {"morph": "STORM Attention Interpolation", "placement": "STORM Spatial Transport",
            "heatmap": "STORM Attention Heatmap"}


def search_canvas(page, query: str, screenshot: Path) -> list[str]:
    """Type ``query`` into the node search box (double-click on the canvas) and return the results shown."""
    page.keyboard.press("Escape")
    box = page.locator("#graph-canvas").bounding_box()
    x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.9
    search = page.locator('[role="dialog"] input').first
    for _ in range(3):  # a double-click on empty canvas opens the search box (not while a panel has focus)
        page.mouse.click(x, y)
        page.wait_for_timeout(300)
        page.mouse.dblclick(x, y)
        try:
            search.wait_for(state="visible", timeout=3000)
            break
        except Exception:  # noqa: BLE001 - try again
            page.keyboard.press("Escape")
    else:
        return []
    search.fill(query)
    try:  # results render after a debounce; slower on a busy machine
        page.wait_for_function("""() => document.querySelectorAll('[role="option"]').length > 0""", timeout=8000)
    except Exception:  # noqa: BLE001 - no result is an answer too
        pass
    page.wait_for_timeout(500)
    shown = page.evaluate("""() => [...document.querySelectorAll('[role="option"]')].map((e) => e.innerText)""")
    page.screenshot(path=str(screenshot))
    page.keyboard.press("Escape")
    return shown


def check_discoverability(page, url: str, out: Path) -> list[str]:
    """Errors: node help pages served where the frontend's help panel reads them, node search by task."""
    errors = []
    for node_id, title in (("STORM_AttentionInterpolation", "STORM Attention Interpolation"),
                           ("STORM_SubjectTokens", "STORM Subject Tokens")):
        reply = page.evaluate("""async (path) => { const r = await fetch(path);
            return [r.status, await r.text()]; }""", f"/extensions/ComfyUI-STORM/docs/{node_id}.md")
        if reply[0] != 200 or not reply[1].startswith(f"# {title}"):
            errors.append(f"help page of {node_id}: HTTP {reply[0]}, {reply[1][:80]!r}")
    for query, title in SEARCHES.items():
        shown = search_canvas(page, query, out / f"search_{query}.png")
        if not any(title in s for s in shown[:5]):
            errors.append(f"node search for {query!r} does not list {title} first 5: {shown[:5]}")
    return errors


def check_templates(page, out: Path) -> list[str]:
    """Errors: the template browser's view of the examples. The server lists every example file under
    the pack's folder name, each workflow and thumbnail loads from the URL the frontend builds from the
    file name (spaces and all), and the browser dialog shows every example's title."""
    errors = []
    listed = page.evaluate("async () => (await (await fetch('/api/workflow_templates')).json())")
    mine = sorted(listed.get(PACK_FOLDER, []))
    if mine != sorted(EXAMPLES.values()):
        errors.append(f"/api/workflow_templates lists {mine} for {PACK_FOLDER}, expected {sorted(EXAMPLES.values())}")
    for name in mine:
        loaded = page.evaluate("""async ([pack, name]) => {
            const base = `/workflow_templates/${pack}/${name}`;
            const wf = await fetch("/api" + base + ".json");
            const nodes = wf.ok ? (await wf.json()).nodes.length : 0;
            const img = new Image();
            const size = await new Promise((done) => { img.onload = () => done(img.naturalWidth);
                img.onerror = () => done(0); img.src = "/api" + base + ".jpg"; });
            return [wf.status, nodes, size]; }""", [PACK_FOLDER, name])
        if loaded[0] != 200 or loaded[1] == 0 or loaded[2] == 0:
            errors.append(f"template {name!r}: workflow HTTP {loaded[0]} with {loaded[1]} nodes, thumbnail width {loaded[2]}")
    def titles_shown() -> list[str]:
        page.screenshot(path=str(out / "templates.png"))
        return page.evaluate("(names) => names.filter((n) => document.body.innerText.includes(n))",
                             sorted(EXAMPLES.values()))

    page.evaluate("async () => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.wait_for_timeout(3000)
    shown = titles_shown()
    if not shown:  # the dialog may open on another category: the pack's own entry lists only its examples
        page.evaluate("""(pack) => { const el = [...document.querySelectorAll('*')].find((e) =>
            e.children.length === 0 && e.textContent.trim() === pack); el && el.click(); }""", PACK_FOLDER)
        page.wait_for_timeout(2000)
        shown = titles_shown()
    missing = sorted(set(EXAMPLES.values()) - set(shown))
    if missing:
        errors.append(f"the template dialog does not show {missing} (screenshot templates.png)")
    page.keyboard.press("Escape")
    page.wait_for_timeout(500)
    return errors


def chip_state(page, node_id: int) -> tuple[list[list], str]:
    """The token chips of a node (ref, chosen) and its subjects widget value."""
    return page.evaluate("""(id) => { const node = app.graph.getNodeById(id);
        const box = node.widgets.find((w) => w.name === "storm_chips").element;
        return [[...box.querySelectorAll(".storm-chip")].map((c) => [c.dataset.ref,
                 c.classList.contains("storm-chip-chosen")]),
                node.widgets.find((w) => w.name === "subjects").value]; }""", node_id)


def click_chip(page, node_id: int, ref: str) -> None:
    page.evaluate("""([id, ref]) => { const node = app.graph.getNodeById(id);
        node.widgets.find((w) => w.name === "storm_chips").element
            .querySelector(`.storm-chip[data-ref="${ref}"]`).click(); }""", [node_id, ref])
    page.wait_for_timeout(400)


def check_chips(page, url: str, node_defs: dict, out: Path, timeout: float) -> list[str]:
    """Token chips of Subject Tokens (the Attend-and-Excite example): they show the prompt's words with the
    subjects marked, a click toggles a word in 'subjects', and the run uses the subjects chosen so."""
    workflow = tiny_version(json.loads(example_path("attend_and_excite").read_text()), node_defs)
    node_id = next(n["id"] for n in workflow["nodes"] if n["type"] == "STORM_SubjectTokens")
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1500)
    errors = []
    chips, subjects = chip_state(page, node_id)
    expected = [["a", False], ["cat", True], ["and", False], ["a#2", False], ["dog", True]]
    if chips != expected or subjects != "cat, dog":
        return [f"chips of 'a cat and a dog' with subjects 'cat, dog': {chips}, subjects {subjects!r}"]
    click_chip(page, node_id, "dog")
    if chip_state(page, node_id) != [[["a", False], ["cat", True], ["and", False], ["a#2", False], ["dog", False]],
                                     "cat"]:
        errors.append(f"after clicking 'dog': {chip_state(page, node_id)}")
    click_chip(page, node_id, "dog")
    click_chip(page, node_id, "cat")
    chips, subjects = chip_state(page, node_id)
    if subjects != "dog":
        errors.append(f"after clicking 'dog' and 'cat': subjects {subjects!r}, chips {chips}")
    page.screenshot(path=str(out / "chips.png"))
    error, entry = queue_and_wait(page, url, timeout)
    text = "\n".join((entry.get("outputs") or {}).get(str(node_id), {}).get("storm_text") or [])
    chosen = text.split("Subjects:", 1)[-1] if "Subjects:" in text else ""
    if error or "dog:" not in chosen or "cat:" in chosen:
        errors.append(f"the run did not use the subjects chosen with the chips: {error or chosen!r}")
    return errors


def chip_texts(page, node_id: int) -> tuple[list[str], str]:
    """The token chips' labels of a node and the caption before them (the streams on SD3/Flux)."""
    return page.evaluate("""(id) => { const box = app.graph.getNodeById(id).widgets
            .find((w) => w.name === "storm_chips").element;
        return [[...box.querySelectorAll(".storm-chip")].map((c) => c.textContent),
                box.querySelector(".storm-chip-columns")?.textContent ?? ""]; }""", node_id)


#: per DiT example: the chips of its prompt and their caption (the family read off the loader feeding the chip node's
#: clip input), as the host's tokenizer gives them (``nodes.web_routes.prompt_tokens``, the route the chips read).
#: SD3: 77 CLIP columns then T5 rows, where T5 writes "a" as the boundary mark then "a"; Flux: T5 rows; Qwen-Image:
#: the Qwen2.5-VL rows the model keeps (the chat template's opening dropped); Z-Image: Qwen3 rows after the opening
DIT_CHIPS = {
    "sd35_attend_and_excite": (["a 1 · 77+78", "cat 2 · 79", "and 3 · 80", "a 4 · 81+82", "dog 5 · 83"],
                               "SD3 (CLIP · T5)"),
    "flux_heatmaps": (["a 0+1", "cat 2", "and 3", "a 4+5", "dog 6"], "Flux (T5)"),
    "qwen_image_syngen": (["a 0", "red 1", "crown 2", "and 3", "a 4", "golden 5", "strawberry 6"],
                          "Qwen-Image (Qwen2.5-VL)"),
    "z_image_attend_and_excite": (["a 3", "cat 4", "and 5", "a 6", "dog 7"], "Z-Image (Qwen3)"),
    "krea2_storm_spatial": (["a 0", "cat 1", "to 2", "the 3", "left 4", "of 5", "a 6", "dog 7"], "Krea 2 (Qwen3-VL)"),
}
#: the example whose chip node ("a cat and a dog") the loader cases below connect other loaders to
LOADER_CASES_ON = "z_image_attend_and_excite"
#: loader on the clip input, its widgets -> the chips of "a cat and a dog" and their caption (prompt_tokens again).
#: Each case's family differs from the one before, so a chip list left over from the last loader fails it
CLIP_CHIPS = ["a 1", "cat 2", "and 3", "a 4", "dog 5"]  # SD1.x/SDXL's CLIP columns: no family, no caption
LOADER_CASES = (
    ("DualCLIPLoader", {"type": "flux"}, DIT_CHIPS["flux_heatmaps"]),
    # SD3 without a T5 file: CLIP columns
    ("DualCLIPLoader", {"type": "sd3", "clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors"},
     (CLIP_CHIPS, "")),
    ("TripleCLIPLoader", {}, DIT_CHIPS["sd35_attend_and_excite"]),
    ("CLIPLoader", {"type": "qwen_image", "clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors"},
     (["a 0", "cat 1", "and 2", "a 3", "dog 4"], "Qwen-Image (Qwen2.5-VL)")),
    ("CLIPLoader", {"type": "lumina2", "clip_name": "qwen_3_4b.safetensors"}, DIT_CHIPS[LOADER_CASES_ON]),
    # Lumina 2 itself (a Gemma file): CLIP columns
    ("CLIPLoader", {"type": "lumina2", "clip_name": "gemma_2_2b_fp16.safetensors"}, (CLIP_CHIPS, "")),
    # Flux.2 klein (Qwen3, its 512 rows: the words' rows are Z-Image's)
    ("CLIPLoader", {"type": "flux2", "clip_name": "qwen_3_4b.safetensors"},
     (["a 3", "cat 4", "and 5", "a 6", "dog 7"], "Flux.2 (Qwen3)")),
    # Flux.2 dev (its Mistral tokenizer is inside the file): CLIP columns
    ("CLIPLoader", {"type": "flux2", "clip_name": "mistral_3_small_flux2_bf16.safetensors"}, (CLIP_CHIPS, "")),
    # Krea 2 (Qwen3-VL 4B; the rows Qwen-Image's template leaves, as Qwen-Image's)
    ("CLIPLoader", {"type": "krea2", "clip_name": "qwen3vl_4b_fp8_scaled.safetensors"},
     (["a 0", "cat 1", "and 2", "a 3", "dog 4"], "Krea 2 (Qwen3-VL)")),
)
CHIP_NODES = ("STORM_SubjectTokens", "STORM_PromptAnalysis")  # the nodes web/storm.js gives token chips


def poll_chips(page, node_id: int, done, seconds: float = 20.0) -> tuple[list[str], str]:
    """:func:`chip_texts` once ``done(found)`` holds, or after ``seconds`` (the first request of a family loads
    its tokenizers: T5's takes seconds on a busy CPU)."""
    deadline = time.monotonic() + seconds
    while True:
        found = chip_texts(page, node_id)
        if done(found) or time.monotonic() > deadline:
            return found
        page.wait_for_timeout(250)


def load_chip_node(page, key: str) -> int:
    """Load the example ``key`` as it is (its own loaders: the tiny stand-ins would hide the family) and return the
    id of its chip node."""
    workflow = json.loads(example_path(key).read_text())
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    return next(n["id"] for n in workflow["nodes"] if n["type"] in CHIP_NODES)


def check_dit_chips(page, out: Path) -> list[str]:
    """Token chips of Subject Tokens / Prompt Analysis in the DiT examples show the rows of that family's
    conditioning (the family read off the loader feeding the node's clip input)."""
    errors = []
    for key, expected in DIT_CHIPS.items():
        node_id = load_chip_node(page, key)
        found = poll_chips(page, node_id, lambda f, expected=expected: tuple(f) == expected)
        if tuple(found) != expected:
            errors.append(f"{key}: chips {found[0]} with caption {found[1]!r}, expected {expected[0]} with {expected[1]!r}")
        page.screenshot(path=str(out / f"chips-{key}.png"))
    # the family follows the loader connected to `clip` (see LOADER_CASES)
    node_id = load_chip_node(page, LOADER_CASES_ON)
    for loader, widgets, expected in LOADER_CASES:
        page.evaluate("""([id, type, values]) => { const node = app.graph.getNodeById(id);
            const loader = LiteGraph.createNode(type);
            for (const [name, value] of Object.entries(values)) loader.widgets.find((w) => w.name === name).value = value;
            app.graph.add(loader);
            loader.connect(0, node, node.findInputSlot("clip")); }""", [node_id, loader, widgets])
        found = poll_chips(page, node_id, lambda f, expected=expected: tuple(f) == expected)
        if tuple(found) != expected:
            errors.append(f"with a {loader} {widgets} on clip: chips {found[0]} with caption {found[1]!r}, "
                          f"expected {expected[0]} with {expected[1]!r}")
    # a chip refresh still pending (250 ms after typing) when another workflow replaces the graph: the node has left
    # its graph by then; web/storm.js must not throw (main fails this check on the page's errors)
    page.evaluate("""async ([id, next]) => { const text = app.graph.getNodeById(id).widgets.find((w) => w.name === "text");
        text.callback?.("a cat and a bird"); await app.loadGraphData(next); }""",
                  [node_id, json.loads(example_path("flux_heatmaps").read_text())])
    page.wait_for_timeout(1000)
    return errors


def split_errors(errors: list[str], noted: set[str]) -> tuple[list[str], list[str]]:
    """(messages from our extension, other errors not noted before: first line, once per run)."""
    ours = [e for e in errors if OUR_SCRIPT in e or "STORM.ui" in e]
    others = []
    for line in (HTTP_ERROR.sub(r"HTTP \1: \2", e.splitlines()[0])[:300] for e in errors
                 if e not in ours and not e.startswith("console.warning")):
        if line not in noted:
            noted.add(line)
            others.append(line)
    return ours, others


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="frontend-check", help="folder for screenshots and server.log")
    parser.add_argument("--port", type=int, default=8231)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--only", action="append", default=[], help="check only this example (key such as astar, or file name without .json); repeatable")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one example may run")
    parser.add_argument("--vue-nodes", action="store_true",
                        help="check with the frontend's Vue node renderer ('Nodes 2.0') switched on")
    args = parser.parse_args()
    comfyui = Path(os.environ.get("COMFYUI_PATH", ""))
    if not (comfyui / "main.py").exists():
        print("set COMFYUI_PATH to an upstream ComfyUI checkout", file=sys.stderr)
        return 2
    try:
        examples = select_examples(args.only)
    except ValueError as e:
        print(f"check_frontend: {e}", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            server = start_server(comfyui, args.port, Path(tmp) / "base", out / "server.log")
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 2
        try:
            served_defs = {name: spec["input"] for name, spec in get_json(url + "/object_info").items()}
            # the IP-Adapter pack is not installed: its nodes in an example are read by their stand-ins' inputs
            node_defs = with_third_party_defs(served_defs)
            absent = frozenset(node_defs) - frozenset(served_defs)
            stats = get_json(url + "/system_stats")["system"]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 2600, "height": 1250})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(f"page error: {e.message} {e.stack or ''}"))
                page.on("console", lambda m: m.type in ("error", "warning") and errors.append(
                    f"console.{m.type}: {m.text} ({m.location.get('url')})"))
                page.goto(url)
                page.wait_for_function("window.app && window.app.graph", timeout=60000)
                page.wait_for_timeout(2500)
                page.keyboard.press("Escape")
                if args.vue_nodes:
                    page.evaluate("async () => app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
                    page.wait_for_timeout(1500)
                served = page.evaluate("window.__COMFYUI_FRONTEND_VERSION__")
                print(f"frontend served: {served} (installed comfyui-frontend-package "
                      f"{importlib.metadata.version('comfyui-frontend-package')}), ComfyUI {stats['comfyui_version']}, "
                      f"Chromium {browser.version}"
                      + (", Vue node renderer on" if args.vue_nodes else ""))
                loaded = "STORM.ui" in page.evaluate("app.extensions.map(e => e.name)")
                noted: set[str] = set()
                ours, others = split_errors(errors, noted)
                print(f"STORM.ui extension loaded: {loaded}", *ours, *(f"note: {e}" for e in others), sep="\n  ")
                if ours or not loaded:
                    failed.append("STORM.ui extension")
                found = check_discoverability(page, url, out)
                print(f"discoverability (help pages, node search): {'FAIL' if found else 'ok'}",
                      *found, sep="\n  ")
                if found:
                    failed.append("discoverability")
                found = check_templates(page, out)
                print(f"template browser (listed, loaded, thumbnails, titles shown): {'FAIL' if found else 'ok'}",
                      *found, sep="\n  ")
                if found:
                    failed.append("template browser")
                seen = len(errors)
                try:
                    found = check_chips(page, url, node_defs, out, args.timeout)
                except Exception as exc:  # noqa: BLE001 - report, go on with the examples
                    found = [f"{type(exc).__name__}: {exc}"]
                ours, others = split_errors(errors[seen:], noted)  # web/storm.js' errors meanwhile fail it too
                found += ours
                print(f"token chips (shown, clicked, used by the run): {'FAIL' if found else 'ok'}",
                      *found, *(f"note: {e}" for e in others), sep="\n  ")
                if found:
                    failed.append("token chips")
                seen = len(errors)
                try:
                    found = check_dit_chips(page, out)
                except Exception as exc:  # noqa: BLE001 - report, go on with the examples
                    found = [f"{type(exc).__name__}: {exc}"]
                ours, others = split_errors(errors[seen:], noted)
                found += ours
                print(f"token chips on DiTs (the rows of their conditioning: {', '.join(DIT_CHIPS)}; "
                      f"{len(LOADER_CASES)} loaders on clip; a refresh pending when the graph is replaced): "
                      f"{'FAIL' if found else 'ok'}", *found, *(f"note: {e}" for e in others), sep="\n  ")
                if found:
                    failed.append("DiT token chips")
                for path in examples:
                    seen = len(errors)
                    try:
                        error, summary = check_example(page, url, path, node_defs, out, args.timeout, absent)
                    except Exception as exc:  # one broken example must not hide the others
                        error, summary = f"{type(exc).__name__}: {exc}", "check crashed"
                    ours, others = split_errors(errors[seen:], noted)
                    error = "\n  ".join(filter(None, [error, *ours]))
                    print(f"{path.stem}: {'FAIL' if error else 'ok'} ({summary})", *([error] if error else []),
                          *(f"note: {e}" for e in others), sep="\n  ")
                    if error:
                        failed.append(path.stem)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"FAILED: {', '.join(failed)} (server log: {out / 'server.log'})" if failed
          else f"all {len(examples)} example(s) passed; screenshots in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
