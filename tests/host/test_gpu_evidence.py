"""``python -m scripts.gpu_evidence --dry-run``: every stage of the lent-GPU command at toy size on the CPU.

The dry run runs once per module, in its own process, as a lent machine would run it: on ComfyUI 0.33 (the tree
the payload carries) with every package the machines' image lacks and the payload does not carry blocked
(``--device-image-check``), on other hosts without. The tests read what it wrote: the training followed its plan and the model loads;
the shape table has a success rate, an interval and the change against plain sampling for every targeted
method; every architecture's variants have their time and peak memory beside the host's plain sampling of the
same process; at most 8 files, each under 16 MiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.host import REPO_ROOT
from scripts import benchmark, gpu_evidence

pytestmark = pytest.mark.slow


def _payload_host(host) -> bool:
    """The host the payload carries (``scripts/prepare_gpu_payload.sh``): the device check applies to it alone."""
    return host.version.startswith("0.33")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, host):
    """``(out folder, evidence, console output)`` of one dry run."""
    root = tmp_path_factory.mktemp("gpu-evidence")
    out = root / "out"
    cmd = [sys.executable, "-m", "scripts.gpu_evidence", "--dry-run", "--out", str(out), "--work", str(root / "work")]
    if _payload_host(host):
        cmd.append("--device-image-check")
    env = dict(os.environ, STORM_TEST_DEVICE="cpu")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "evidence.json").read_text()), proc.stderr


def test_every_stage_finishes_within_the_files_that_come_back(dry_run):
    out, evidence, console = dry_run
    assert {k: v["status"] for k, v in evidence["stages"].items()} == dict.fromkeys(gpu_evidence.STAGES, "done"), \
        console[-3000:]
    files = sorted(out.iterdir())
    assert len(files) <= 8 and all(f.stat().st_size < 16 * 2 ** 20 for f in files)
    names = {f.name for f in files}
    assert {"evidence.json", "evidence.md", "shape-grid.png"} <= names
    assert evidence["dry_run"] is True and evidence["environment"]["device"] == "cpu (dry run)"


def test_the_run_needed_nothing_the_device_image_lacks_beyond_the_payload(dry_run, host):
    if not _payload_host(host):
        pytest.skip("the device check is made on the host the payload carries (ComfyUI 0.33)")
    from harness.device_image import blocked, carried

    _, evidence, _ = dry_run
    env = evidence["environment"]
    assert set(env["blocked_imports"].split(",")) == set(blocked()) and "spacy" in blocked()
    assert env["packages"]["spacy"] is None  # blocked: the prompt analysis fell back to its rules
    assert all(env["packages"][name] for name in carried())  # what the payload carries was imported
    assert set(evidence["shape"]["settings"]["prompt_analysis"].values()) == {"rules"}


def test_the_training_followed_its_plan_and_the_exported_model_loads(dry_run):
    from harness.tiny_models import load_trained

    out, evidence, _ = dry_run
    train = evidence["train"]
    plan = train["plan"]
    assert plan["size"] == gpu_evidence.DRY.size
    for stage in ("vae", "diffusion"):
        assert plan["calibration"][stage]["seconds_per_step"] > 0
        assert 1 <= plan["steps"][stage] == train[stage]["step"] == train["model"]["steps"][stage]
    assert train["vae"]["last50"]["psnr"] > 0 and train["diffusion"]["last50"]["mse"] > 0
    files = train["model"]["files"]
    assert len(files) >= 2 and all(name.startswith(gpu_evidence.MODEL_NAME + ".part") for name in files)
    whole = gpu_evidence.join_parts(out)  # checks the sha256 the JSON records
    assert whole.stat().st_size == train["model"]["bytes"]
    with torch.inference_mode():
        tiny = load_trained(whole)  # strict: every key of the SD1.5 layout, nothing else
        image = tiny.vae.decode(torch.zeros(1, 4, 8, 8))
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    whole.unlink()


def test_the_shape_table_has_every_targeted_method_with_its_change_against_plain(dry_run):
    from PIL import Image

    from scripts import shape_benchmark as sb

    out, evidence, _ = dry_run
    shape = evidence["shape"]
    assert shape["complete"] is True and shape["settings"]["samples"] == gpu_evidence.DRY.samples
    table = {(e["kind"], e["method"]): e for e in shape["table"]}
    expected = {(kind, m) for kind in sb.SUCCESS for m in sb.chosen_methods(kind, True, [], list(gpu_evidence.SHAPE_EXTRA))}
    assert set(table) == expected and len(expected) == 18
    for (_kind, method), e in table.items():
        assert e["n"] == gpu_evidence.DRY.samples and 0.0 <= e["rate"] <= 1.0
        assert e["ci"][0] <= e["rate"] <= e["ci"][1] and e["seconds"] > 0
        assert ("change" in e) == (method != "plain")
    methods = list(dict.fromkeys(m for _, m in table))
    with Image.open(out / "shape-grid.png") as grid:
        assert grid.size[0] == len(methods) * gpu_evidence.DRY.size
    md = (out / "evidence.md").read_text()
    assert md.count("| relation | ") == 6 and "| pair | attend_excite | 2 |" in md


def test_every_architecture_has_time_and_peak_memory_beside_its_plain_sampling(dry_run):
    out, evidence, _ = dry_run
    real = evidence["real"]
    assert real["errors"] == {}
    archs = ["sd15", "sdxl", "sd35m", "flux"]
    rows = [r for r in real["rows"] if r["variant"] != "floor"]
    groups = {}
    for r in rows:
        groups.setdefault((r["arch"], r["units"], bool(r.get("extrapolated_from"))), {})[r["variant"]] = r
    expected = {(a, None, False) for a in archs if a != "flux"}
    if "flux" in archs:
        expected |= {("flux", u, False) for u in benchmark.FLUX_UNITS} | {("flux", 19, True)}
    assert set(groups) == expected
    for key, variants in groups.items():
        assert {"host", "guided-off", "guided-noref", "guided-1iter", "guided-fullpass", "storm-noref"} <= set(variants)
        for r in variants.values():
            assert r["size"] == 64 and r["toy"] is True and r["peak_kind"] == "peak RSS"
            if not key[2]:  # measured (an extrapolation of noisy toy timings may come out below zero)
                assert r["seconds"] > 0 and r["peak_mib"] > 100  # the process: interpreter, torch, the model
        assert variants["host"]["ratio"] == pytest.approx(1.0)
    floors = {(r["arch"], r["units"]) for r in real["rows"] if r["variant"] == "floor"}
    assert {(a, None) for a in archs if a != "flux"} <= floors
    md = (out / "evidence.md").read_text()
    host = groups[("sd15", None, False)]["host"]
    noref = groups[("sd15", None, False)]["guided-noref"]
    assert (f"| sd15 | 64 | float32 | guided-noref | {noref['seconds']:.3f} | {host['seconds']:.3f} |"
            f" {noref['ratio']:.2f} | 2 | {noref['peak_mib']:,.0f} | {host['peak_mib']:,.0f} |") in md
    if "flux" in archs:
        assert "| flux/19* | 64 | float32 | host |" in md


def test_flux_rows_extrapolate_along_the_line_through_two_unit_counts():
    def row(variant, units, seconds, peak):
        return {"device": "cuda", "arch": "flux", "variant": variant, "units": units, "seconds": seconds,
                "ratio": 1.0, "peak_mib": peak}

    rows = [row("host", 1, 1.5, 3000), row("host", 3, 3.5, 7000), row("guided-noref", 1, 4.0, 5000),
            row("guided-noref", 3, 10.0, 13000), row("host", None, 9.0, 1)]
    out = {r["variant"]: r for r in benchmark.extrapolate_units(rows, 19)}
    assert out["host"]["seconds"] == pytest.approx(1.5 + 18 * 1.0) and out["host"]["peak_mib"] == 3000 + 18 * 2000
    assert out["guided-noref"]["seconds"] == pytest.approx(4.0 + 18 * 3.0)
    assert out["guided-noref"]["ratio"] == pytest.approx(58.0 / 19.5)
    assert out["host"]["units"] == 19 and out["host"]["extrapolated_from"] == [1, 3]


def test_the_model_file_splits_into_parts_that_join_back(tmp_path):
    src = tmp_path / "model.safetensors"
    data = os.urandom(2500)
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    assert gpu_evidence.split_file(src, out, part_bytes=1000) == [f"model.safetensors.part{i}" for i in range(3)]
    assert max(p.stat().st_size for p in out.iterdir()) == 1000
    assert gpu_evidence.join_parts(out, "model.safetensors").read_bytes() == data
    assert gpu_evidence.split_file(src, tmp_path / "out", part_bytes=4096) == ["model.safetensors"]  # old parts gone
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]


def test_scenes_drawn_ahead_in_a_worker_process_are_the_inline_batches():
    from scripts.train_shape_model import BatchSource, scene_batch

    source = BatchSource(seed=3, stage="diffusion", batch=2, size=64, workers=1)
    try:
        for step in range(3):
            images, scenes = source.get(step, stop=3)
            inline, inline_scenes = scene_batch(3, "diffusion", step, 2, 64)
            assert torch.equal(images, inline) and [s.caption for s in scenes] == [s.caption for s in inline_scenes]
    finally:
        source.close()


def test_the_training_steps_fill_the_budget():
    plan = gpu_evidence.plan_steps(gpu_evidence.GPU, seconds=250, vae_step=0.02, diffusion_step=0.05, overhead=5)
    assert plan["vae"] == int(0.2 * 240 / 0.02) == 2400
    assert plan["diffusion"] == int((240 - 2400 * 0.02) / 0.05)
    assert gpu_evidence.plan_steps(gpu_evidence.GPU, 250, 0.001, 0.05, 5)["vae"] == gpu_evidence.GPU.vae_steps_max


def test_the_rule_based_prompt_analysis_reads_the_benchmark_prompts_as_spacy_does(pack):
    """On a lent machine spaCy is absent and the pack's rules analyse the prompts; for the first prompt of each
    kind (what the GPU run benchmarks) they find the same objects, bindings and relations."""
    from harness.shape_world import prompt_sets
    from harness.tiny_models import build_tiny

    if not pack.storm_ops.prompt.nlp.spacy_installed():
        pytest.skip("no spaCy here to compare with")
    from harness.nodeutil import call_node

    with torch.inference_mode():
        clip = build_tiny("sd15").clip
        for kind in ("pair", "binding", "relation"):
            text = prompt_sets()[kind][0].text
            spacy_analysis, rules = (call_node(pack.NODE_CLASS_MAPPINGS["STORM_PromptAnalysis"], clip=clip, text=text,
                                               parser=parser)[0] for parser in ("spacy", "rules"))
            assert spacy_analysis.method.startswith("spacy") and rules.method == "rules"
            for field in ("entities", "bindings", "relations"):
                assert getattr(rules, field) == getattr(spacy_analysis, field), (text, field)


def test_the_device_image_check_blocks_what_the_payload_does_not_carry():
    from harness.device_image import IMAGE_LACKS, blocked, carried

    assert carried() == ["comfy_aimdo", "comfy_kitchen", "torchsde", "trampoline"]
    assert set(blocked()) == set(IMAGE_LACKS) - set(carried())
    env = dict(os.environ, STORM_BLOCK_IMPORTS="spacy,av")
    probe = "import scripts, importlib.util; print(importlib.util.find_spec('spacy')); import av"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=Path(REPO_ROOT), env=env, capture_output=True, text=True)
    assert proc.stdout.strip() == "None" and "ModuleNotFoundError" in proc.stderr
