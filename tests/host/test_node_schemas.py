"""Node schemas: a default has one owner.

The widget defaults of the loss and interpolation nodes are built from ``storm_ops`` constants,
and the Python defaults of a node's FUNCTION (used when a prompt leaves an optional input out)
must equal the widget defaults it declares.
"""

import inspect

import pytest

from harness.workflows import widget_defaults


def _function_defaults(node_cls) -> dict:
    fn = inspect.unwrap(getattr(node_cls, node_cls.FUNCTION))
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_every_function_default_equals_the_declared_widget_default(nodes):
    for node_id, cls in nodes.items():
        declared = widget_defaults(cls.INPUT_TYPES())
        for name, default in _function_defaults(cls).items():
            if default is None:  # an optional link input (guidance, masks, image...)
                continue
            assert name in declared, f"{node_id}.{cls.FUNCTION}: {name} has a default but no widget"
            assert default == declared[name] and type(default) is type(declared[name]), (node_id, name)


@pytest.mark.parametrize("node_id, module, names", [
    ("STORM_AttendAndExcite", "attend_excite", {"step_size": "DEFAULT_STEP_SIZE.scale",
                                                "start_at": "DEFAULT_WINDOW.start", "end_at": "DEFAULT_WINDOW.end",
                                                "max_refine_iters": "DEFAULT_MAX_REFINE_ITERS",
                                                "step_decay": "DEFAULT_STEP_SIZE.end_factor"}),
    ("STORM_SynGen", "syngen", {"step_size": "DEFAULT_STEP_SIZE.scale", "start_at": "DEFAULT_WINDOW.start",
                                "end_at": "DEFAULT_WINDOW.end", "include_entities": "DEFAULT_INCLUDE_ENTITIES"}),
    ("STORM_AStar", "astar", {"step_size": "DEFAULT_STEP_SIZE.scale", "start_at": "DEFAULT_WINDOW.start",
                              "end_at": "DEFAULT_WINDOW.end", "mask_threshold": "DEFAULT_MASK_THRESHOLD",
                              "step_decay": "DEFAULT_STEP_SIZE.end_factor"}),
    ("STORM_SpatialTransport", "transport_core", {"step_size": "DEFAULT_STEP_SIZE.scale", "start_at": "DEFAULT_WINDOW.start",
                                         "end_at": "DEFAULT_WINDOW.end", "max_refine_iters": "DEFAULT_MAX_REFINE_ITERS",
                                         "step_decay": "DEFAULT_STEP_SIZE.end_factor"}),
])
def test_loss_widget_defaults_are_the_storm_ops_defaults(pack, nodes, node_id, module, names):
    losses = getattr(pack.storm_ops.losses, module)
    declared = widget_defaults(nodes[node_id].INPUT_TYPES())
    for name, path in names.items():
        value = losses
        for attr in path.split("."):
            value = getattr(value, attr)
        assert declared[name] == value, (node_id, name)
    if hasattr(losses, "DEFAULT_THRESHOLDS"):
        assert pack.storm_ops.guidance.terms.parse_thresholds(declared["thresholds"]) == losses.DEFAULT_THRESHOLDS


def test_every_node_can_be_found_by_what_it_does(pack, nodes):
    """Node search (name, display name, aliases) finds each node by its task, e.g. "morph", "placement"."""
    info = pack.nodes.web_routes.node_info(nodes)
    assert set(info) == set(nodes)
    for node_id, entry in info.items():
        aliases = entry["search_aliases"]
        assert len(aliases) >= 3 and all(a == a.lower() and a.strip() == a for a in aliases), node_id
    found = {word: [n for n, e in info.items() if word in e["search_aliases"]] for word in ("morph", "placement", "heatmap")}
    assert found == {"morph": ["STORM_AttentionInterpolation"], "placement": ["STORM_SpatialTransport"],
                     "heatmap": ["STORM_AttentionHeatmap"]}
    # without a running server (the executor alone, these tests) no route is added and nothing breaks
    assert pack.nodes.web_routes.register_routes(nodes) is False


def test_every_node_that_reports_text_shows_it_in_the_node(nodes):
    """A node whose function returns ``ui.storm_text`` (or ``storm_log``) is listed in web/storm.js' TEXT_OUTPUTS, which
    draws that text inside the node; otherwise the report would reach the browser and never be shown."""
    import re
    from pathlib import Path

    script = (Path(__file__).resolve().parents[2] / "web" / "storm.js").read_text()
    table = re.search(r"const TEXT_OUTPUTS = \{(.*?)\};", script, re.S).group(1)
    listed = dict(re.findall(r"(\w+): \"(\w+)\"", table))
    for node_id, cls in nodes.items():
        source = inspect.getsource(cls)
        for key in ("storm_text", "storm_log"):
            if re.search(rf"[\"']ui[\"']: \{{[\"']{key}[\"']", source):
                assert listed.get(node_id) == key, f"{node_id} reports {key} but web/storm.js does not show it"
