"""The example workflows are what ``python -m scripts.build_example_workflows`` writes: widget values
by name, in the order of the nodes' real INPUT_TYPES, defaults from the nodes (so from storm_ops)."""

from harness.host import REPO_ROOT
from harness.workflows import EXAMPLES_DIR, example_files


def test_the_builder_regenerates_every_example_byte_for_byte(tmp_path):
    from scripts.build_example_workflows import build_all

    written = build_all(tmp_path)
    examples = example_files()
    assert sorted(p.name for p in written) == [p.name for p in examples]
    for path in written:
        assert path.read_bytes() == (EXAMPLES_DIR / path.name).read_bytes(), (
            f"{path.name} is out of date: run python -m scripts.build_example_workflows")


def test_every_node_has_an_up_to_date_help_page(tmp_path):
    """web/docs/<node id>.md (the frontend's node help panel) is what scripts.build_node_docs writes."""
    from harness.host import load_pack
    from scripts.build_node_docs import build_all

    written = build_all(tmp_path)
    pages = sorted((REPO_ROOT / "web" / "docs").glob("*.md"))
    assert sorted(p.name for p in written) == [p.name for p in pages]
    assert {p.stem for p in pages} == set(load_pack().NODE_CLASS_MAPPINGS)
    for path in written:
        assert path.read_text() == (REPO_ROOT / "web" / "docs" / path.name).read_text(), (
            f"web/docs/{path.name} is out of date: run python -m scripts.build_node_docs")
