"""Check the pack in the real ComfyUI frontend (optional developer check, not part of CI).

Starts an upstream ComfyUI server on loopback with ComfyUI-STORM and the test-only tiny
checkpoint loader, opens it in headless Chromium, and for every example workflow:

* loads it with ``app.loadGraphData`` and compares the frontend's ``app.graphToPrompt()`` with
  the test harness' ``ui_to_api`` (which the workflow tier relies on);
* for ``--run NAME``: queues that workflow (tiny model, small size) and screenshots the result.

Needs: COMFYUI_PATH (an upstream checkout), ``pip install comfyui-frontend-package playwright``
in that environment, and a Chromium binary (Debian: ``apt-get install chromium``).

    COMFYUI_PATH=/path/to/ComfyUI python scripts/check_frontend.py --out frontend-check --run attend_and_excite
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


def start_server(comfyui: Path, port: int, base: Path) -> subprocess.Popen:
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-STORM").symlink_to(ROOT)
    (base / "custom_nodes" / "storm_test_tiny_nodes").symlink_to(ROOT / "tests" / "harness" / "tiny_nodes")
    log = open(base / "server.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--disable-auto-launch", "--base-directory", str(base),
                             "--database-url", "sqlite:///:memory:", "--disable-api-nodes"],
                            cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info/STORM_SubjectTokens", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"the server did not start; see {base / 'server.log'}")


#: per node type: widget values replaced so a run takes seconds on CPU (as tests/workflows' CI_PROFILE)
TINY_PROFILE = {
    "EmptyLatentImage": {"width": 128, "height": 128},
    "STORM_GuidedKSampler": {"steps": 8},
    "STORM_AttentionInterpolation": {"steps": 6},
    "KSampler": {"steps": 8},
    "BasicScheduler": {"steps": 8},
}


def tiny_version(workflow: dict, node_defs: dict) -> dict:
    """The workflow with the tiny loader and ``TINY_PROFILE``, widgets found by name, not position."""
    from harness.workflows import TINY_LOADER, widget_slots

    wf = json.loads(json.dumps(workflow))
    for node in wf["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["type"] = TINY_LOADER
        slots = widget_slots(node_defs.get(node["type"], {}))
        for name, value in TINY_PROFILE.get(node["type"], {}).items():
            node["widgets_values"][slots.index(name)] = value
    return wf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="frontend-check", help="folder for screenshots")
    parser.add_argument("--port", type=int, default=8231)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--run", action="append", default=[], help="example workflow to execute (stem)")
    args = parser.parse_args()
    comfyui = Path(os.environ.get("COMFYUI_PATH", ""))
    if not (comfyui / "main.py").exists():
        print("set COMFYUI_PATH to an upstream ComfyUI checkout", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from harness.workflows import ui_to_api

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(comfyui, args.port, Path(tmp) / "base")
        try:
            info = json.loads(urllib.request.urlopen(url + "/object_info").read())
            node_defs = {name: spec["input"] for name, spec in info.items()}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 2600, "height": 1250})
                page.goto(url)
                page.wait_for_function("window.app && window.app.graph", timeout=60000)
                page.wait_for_timeout(2500)
                page.keyboard.press("Escape")
                loaded = page.evaluate("app.extensions.map(e => e.name)")
                print("STORM.ui extension loaded:", "STORM.ui" in loaded)
                failures += "STORM.ui" not in loaded
                for path in sorted((ROOT / "example_workflows").glob("*.json")):
                    workflow = json.loads(path.read_text())
                    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
                    page.wait_for_timeout(1000)
                    frontend = page.evaluate("async () => (await app.graphToPrompt()).output")
                    same = ({k: (v["class_type"], v["inputs"]) for k, v in frontend.items()}
                            == {k: (v["class_type"], v["inputs"]) for k, v in ui_to_api(workflow, node_defs).items()})
                    failures += not same
                    print(f"{path.name}: frontend graphToPrompt {'equals' if same else 'DIFFERS FROM'} ui_to_api")
                    page.screenshot(path=str(out / f"{path.stem}.png"))
                for name in args.run:
                    workflow = tiny_version(json.loads((ROOT / "example_workflows" / f"{name}.json").read_text()), node_defs)
                    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
                    page.wait_for_timeout(1000)
                    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
                    deadline = time.monotonic() + 900
                    while time.monotonic() < deadline:
                        queue = json.loads(urllib.request.urlopen(url + "/queue").read())
                        if not queue["queue_running"] and not queue["queue_pending"]:
                            break
                        time.sleep(2)
                    page.wait_for_timeout(3000)
                    page.screenshot(path=str(out / f"run_{name}.png"))
                    print(f"ran {name}: screenshot {out / f'run_{name}.png'}")
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
