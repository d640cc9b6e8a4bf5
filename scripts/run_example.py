"""Run an example workflow headlessly through ComfyUI's own executor on a built-in tiny model.

Writes the saved images, the attention heatmaps and the guidance (loss) log to OUT_DIR:

    python -m scripts.run_example out/                      # the Attend-and-Excite example
    python -m scripts.run_example out/ --workflow storm_spatial --seed 3   # an example by key, or a path

(from the repository root; ``bash scripts/run_example.sh`` sets up the environment first).

When ``models/storm_shapes_sd15.safetensors`` (a tiny SD1.5-topology model trained on flat coloured
shapes at 128 px by ``scripts/train_shape_model.py``) is present, SD1.5 workflows run on it by
default (``--model shapes``): the workflow's prompts are
replaced by shape prompts of the same construction (:data:`SHAPE_PROMPTS`, e.g. "a cat and a dog" ->
"a red circle and a blue square"), its negative prompt by the empty prompt the model was trained
with, and the image is 128 px. ``--model random`` keeps the prompts and uses random weights (noise
images; the plumbing only), as SDXL workflows always do. COMFYUI_PATH=<ComfyUI checkout> runs
against that checkout instead of the pip package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from harness.host import ensure_host
from harness.tiny_models import SHAPE_MODEL_SIZE
from harness.workflows import EXAMPLES, example_path

ROOT = Path(__file__).resolve().parents[1]

#: the example workflows' texts -> the shape-model prompt of the same construction (pair, binding,
#: relation, morph endpoints, composition guide); the negative prompt, and an image prompt's text (its objects come
#: from the pictures), become the empty prompt
SHAPE_PROMPTS = {
    "a cat and a dog": "a red circle and a blue square",
    "cat, dog": "circle, square",
    "a cat and a bird": "a green triangle and a yellow circle",
    "cat, bird": "triangle, circle",
    "a red crown and a golden strawberry": "a yellow square and a green triangle",
    "a cat to the left of a dog": "a red circle to the left of a blue square",
    "a photo of a cat": "a red circle",
    "a photo of a dog": "a blue square",
    "best quality, high quality": "",
    "a dog": "a red circle",
    "a car": "a blue square",
    "a dog driving a car": "a red circle above a blue square",
    "dog, car": "circle, square",
    "blurry, low quality, deformed": "",
}


def use_shape_prompts(prompt: dict) -> list[tuple[str, str]]:
    """Replace, in place, every text input of :data:`SHAPE_PROMPTS`; returns the replacements made."""
    done = []
    for node in prompt.values():
        for key, value in node["inputs"].items():
            if isinstance(value, str) and value in SHAPE_PROMPTS:
                node["inputs"][key] = SHAPE_PROMPTS[value]
                done.append((value, SHAPE_PROMPTS[value]))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default="storm-demo-output", help="folder for the results")
    parser.add_argument("--workflow", default="attend_and_excite",
                        help="a workflow file, or an example's key: " + ", ".join(EXAMPLES))
    parser.add_argument("--model", choices=("shapes", "random"), default=None,
                        help="shapes: the trained shape model with shape prompts (SD1.5 workflows; the default "
                             "when models/storm_shapes_sd15.safetensors is present); random: random weights, the "
                             "workflow's own prompts (the default otherwise)")
    parser.add_argument("--size", type=int, default=None,
                        help=f"image width/height in pixels (default {SHAPE_MODEL_SIZE} on the shape model, else 256)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="override the sampler's seed")
    args = parser.parse_args(argv)

    host = ensure_host()
    from harness.tiny_models import SHAPE_MODEL
    from harness.workflows import TINY_LOADER, get_runner, load_ui_workflow, substitute_checkpoints, ui_to_api

    if args.model is None:
        args.model = "shapes" if SHAPE_MODEL.is_file() else "random"
    elif args.model == "shapes" and not SHAPE_MODEL.is_file():
        parser.error(f"--model shapes: {SHAPE_MODEL} is missing (train and export it: see scripts/train_shape_model.py)")

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.workflow in EXAMPLES:
        args.workflow = str(example_path(args.workflow))
    workflow = load_ui_workflow(args.workflow)
    runner = get_runner()
    prompt = substitute_checkpoints(ui_to_api(workflow, runner.node_defs()), shape_model=args.model == "shapes")
    shapes = any(n["class_type"] == TINY_LOADER and n["inputs"]["ckpt_name"] == SHAPE_MODEL.name
                 for n in prompt.values())
    if args.size is None:
        args.size = SHAPE_MODEL_SIZE if shapes else 256
    replaced = use_shape_prompts(prompt) if shapes else []
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "ImageScale"):  # pictures are scaled to the frame size
            inputs.update(width=args.size, height=args.size)
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = args.steps
        if args.seed is not None:
            for key in ("seed", "noise_seed"):
                if key in inputs and not isinstance(inputs[key], list):
                    inputs[key] = args.seed
    (out / "prompt_api.json").write_text(json.dumps(prompt, indent=1))

    print(f"host: ComfyUI {host.version}; workflow {Path(args.workflow).name}; "
          f"{'shape model' if shapes else 'random-weight model'}; {args.size}px, {args.steps} steps")
    for old, new in replaced:
        print(f"  prompt {old!r} -> {new!r}")
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
