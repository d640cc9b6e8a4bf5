"""storm_ops must be importable without ComfyUI and must never import the host or nodes/."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server",
             "execution", "latent_preview", "node_helpers"}


def test_storm_ops_imports_with_comfyui_blocked():
    code = (
        "import sys\n"
        f"for name in {sorted(FORBIDDEN)!r}: sys.modules[name] = None\n"
        "import storm_ops, storm_ops.losses, storm_ops.guidance.optimize, storm_ops.guidance.terms, storm_ops.tokens.layout\n"
        "import pkgutil\n"
        "for m in pkgutil.walk_packages(storm_ops.__path__, 'storm_ops.'): __import__(m.name)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_storm_ops_has_no_host_or_upward_imports():
    offenders = []
    for path in (ROOT / "storm_ops").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level and node.module and node.module.split(".")[0] == "nodes":
                    offenders.append(f"{path}: from {'.' * node.level}{node.module}")
                depth = len(path.relative_to(ROOT / "storm_ops").parts) - 1
                if node.level > depth + 1:
                    offenders.append(f"{path}: relative import leaves storm_ops")
                names = [node.module or ""] if not node.level else []
            else:
                continue
            offenders += [f"{path}: import {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, "\n".join(offenders)


def test_the_check_itself_catches_a_bad_import(tmp_path):
    tree = ast.parse("import comfy.samplers\nfrom ..nodes import x\n")
    found = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert found[0].names[0].name.split(".")[0] in FORBIDDEN
    assert found[1].level == 2 and found[1].module == "nodes"
