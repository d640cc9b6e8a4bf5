"""Run an example workflow headlessly through ComfyUI's own executor on a built-in tiny model.

Writes the saved images, the attention heatmaps and the guidance (loss) log to OUT_DIR:

    python -m scripts.run_example out/                      # example_workflows/attend_and_excite.json
    python -m scripts.run_example out/ --workflow example_workflows/attend_and_excite.json --steps 50

(from the repository root; ``bash scripts/run_example.sh`` sets up the environment first).

The tiny model has the real SD1.5 block topology and the real CLIP tokenizer but random weights:
the image is noise-like; the run shows the plumbing (prompt -> tokens -> guidance -> heatmaps).
COMFYUI_PATH=<ComfyUI checkout> runs against that checkout instead of the pip package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from harness.host import ensure_host

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default="storm-demo-output", help="folder for the results")
    parser.add_argument("--workflow", default=str(ROOT / "example_workflows" / "attend_and_excite.json"))
    parser.add_argument("--size", type=int, default=256, help="image width/height in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="override the sampler's seed")
    args = parser.parse_args(argv)

    host = ensure_host()
    from harness.workflows import get_runner, load_ui_workflow, substitute_checkpoints, ui_to_api

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workflow = load_ui_workflow(args.workflow)
    runner = get_runner()
    prompt = substitute_checkpoints(ui_to_api(workflow, runner.node_defs()))
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=args.size, height=args.size)
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = args.steps
        if args.seed is not None:
            for key in ("seed", "noise_seed"):
                if key in inputs and not isinstance(inputs[key], list):
                    inputs[key] = args.seed
    (out / "prompt_api.json").write_text(json.dumps(prompt, indent=1))

    print(f"host: ComfyUI {host.name} {host.version}; workflow {Path(args.workflow).name}; "
          f"{args.size}px, {args.steps} steps")
    started = time.perf_counter()
    result = runner.run(prompt, extra_data={"extra_pnginfo": {"workflow": workflow}})
    elapsed = time.perf_counter() - started
    if not result.success:
        print(result.error, file=sys.stderr)
        return 1

    written = []
    for node_id, ui in result.outputs_ui.items():
        kind = prompt[node_id]["class_type"]
        for i, path in enumerate(result.file_paths(node_id)):
            if kind == "STORM_AttentionHeatmap":
                target = out / f"heatmaps_node{node_id}.png"
            else:
                target = out / f"{kind}_node{node_id}_{i}{path.suffix}"
            shutil.copyfile(path, target)
            written.append(target)
        if "storm_log" in ui:
            text = ui["storm_log"][0]
            (out / "loss_log.txt").write_text(text + "\n")
            (out / "loss_log.json").write_text(json.dumps(ui.get("storm_steps", []), indent=1))
            written += [out / "loss_log.txt", out / "loss_log.json"]
            print("guidance log:\n" + text)
        if "storm_text" in ui:
            (out / "tokenization.txt").write_text(ui["storm_text"][0] + "\n")
            written.append(out / "tokenization.txt")
    print(f"done in {elapsed:.1f}s; wrote:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
