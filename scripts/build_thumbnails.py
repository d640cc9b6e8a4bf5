"""Template-browser thumbnails for the example workflows: ``example_workflows/<name>.jpg``.

ComfyUI's frontend lists a custom node pack's ``example_workflows/*.json`` in its template browser
and shows ``<name>.jpg`` beside each as its thumbnail. Each thumbnail is made from a real run of the
workflow on the shipped shape model (``scripts.run_example``: shape prompts of the same construction,
128 px): a 2 x 2 grid of 128 px tiles; the saved image first, then the heatmap overlays the workflow
saves (one per subject), or, for a sequence, frames spread over it. The pack ships no trained DiT, so
the SD3 and Flux examples run on the tests' tiny random-weight models (current ComfyUI only), and
their thumbnails say so on a banner.

    python -m scripts.build_thumbnails                # every example
    python -m scripts.build_thumbnails --only syngen  # one
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from harness.workflows import needs_dit
from scripts import run_example

ROOT = Path(__file__).resolve().parents[1]
TILE = 128


def _saved_images(out: Path, prompt: dict) -> tuple[list[Path], list[Path]]:
    """(the workflow's result images, its heatmap overlay images) written by ``run_example``."""
    results, overlays = [], []
    for node_id, node in prompt.items():
        if node["class_type"] not in ("SaveImage", "PreviewImage"):
            continue
        source = prompt[node["inputs"]["images"][0]]["class_type"]
        files = sorted(out.glob(f"{node['class_type']}_node{node_id}_*.png"),
                       key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        (overlays if source == "STORM_AttentionHeatmap" else results).extend(files)
    return results, overlays


def thumbnail(workflow: Path, target: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if run_example.main([str(out), "--workflow", str(workflow)]) != 0:
            raise RuntimeError(f"{workflow.name}: the run failed")
        prompt = json.loads((out / "prompt_api.json").read_text())
        results, overlays = _saved_images(out, prompt)
        if not results:
            raise RuntimeError(f"{workflow.name}: no saved image")
        if overlays:  # the result, then each subject's heatmap over it
            tiles = [results[0], *overlays][:4]
        else:  # a sequence: frames spread from the first to the last
            n = len(results)
            tiles = [results[round(i * (n - 1) / 3)] for i in range(4)] if n >= 4 else results
        grid = Image.new("RGB", (2 * TILE, 2 * TILE), (232, 232, 232))
        for i, path in enumerate(tiles):
            with Image.open(path) as image:
                grid.paste(image.convert("RGB").resize((TILE, TILE)), ((i % 2) * TILE, (i // 2) * TILE))
    if needs_dit(workflow):
        draw = ImageDraw.Draw(grid)
        draw.rectangle((0, TILE - 9, 2 * TILE, TILE + 9), fill=(32, 32, 32))
        draw.text((6, TILE - 6), "random-weight tiny model: noise", fill=(240, 240, 240))
    grid.save(target, quality=90)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[],
                        help="one example (key such as syngen, or file name without .json); repeatable")
    args = parser.parse_args(argv)
    from harness.tiny_models import SHAPE_MODEL

    if not SHAPE_MODEL.is_file():
        print(f"build_thumbnails: {SHAPE_MODEL} is missing; thumbnails show the shape model's images", file=sys.stderr)
        return 2
    from harness.workflows import select_examples

    try:
        workflows = select_examples(args.only)
    except ValueError as e:
        print(f"build_thumbnails: {e}", file=sys.stderr)
        return 2
    for workflow in workflows:
        print(f"wrote {thumbnail(workflow, workflow.with_suffix('.jpg'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
