"""ComfyUI's two workflow formats: the API format (``{id: {class_type, inputs}}``, what ``/prompt`` runs)
and the UI format (the editor's graph: nodes with positions, widget values and numbered links).

The example workflows are written in the API format; :func:`ui_from_api` lays the same graph out for the
editor from the nodes' definitions (``GET /object_info``), and :func:`api_from_ui` reads a UI graph back
the way the editor queues it (widget values in definition order, links as ``[node, output]``), so a test
can check that both files say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Input types the editor shows as widgets (everything else is a socket).
_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
#: INT widgets the editor follows with a "control after generate" widget of its own (value "fixed" here: the
#: seed stays as given, as on the command line).
_SEED_NAMES = ("seed", "noise_seed")
#: Extra height of nodes whose file widget shows a preview or a player.
_UPLOAD_KEYS = ("image_upload", "audio_upload", "video_upload")
_COLUMN, _ROW = 380, 60


def _inputs(definition: Mapping[str, Any]) -> list[tuple[str, str, bool, dict[str, Any]]]:
    """``(name, type, is_widget, options)`` of a node's inputs in definition order (required first)."""
    out = []
    for group in ("required", "optional"):
        specs = definition.get("input", {}).get(group, {})
        for name in definition.get("input_order", {}).get(group, list(specs)):
            kind, options = specs[name][0], (specs[name][1:] or [{}])[0]
            combo = isinstance(kind, list)
            out.append((name, "COMBO" if combo else kind, combo or kind in _WIDGET_TYPES, options))
    return out


def _has_control(name: str, kind: str, options: Mapping[str, Any]) -> bool:
    """Whether the editor adds its "control after generate" widget after this one."""
    return kind == "INT" and bool(options.get("control_after_generate", name in _SEED_NAMES))


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _depths(api: Mapping[str, Any]) -> dict[str, int]:
    """Column of each node: one right of the deepest node it reads from."""
    depth: dict[str, int] = {}

    def visit(node: str) -> int:
        if node not in depth:
            depth[node] = 0  # cycles cannot occur in a valid workflow; this guards recursion anyway
            sources = [v[0] for v in api[node]["inputs"].values() if _is_link(v)]
            depth[node] = max((visit(str(s)) + 1 for s in sources), default=0)
        return depth[node]

    for node in api:
        visit(node)
    return depth


def ui_from_api(api: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, Any]:
    """The editor's graph of an API-format workflow (node ids kept; laid out left to right)."""
    depth, rows, links, nodes = _depths(api), {}, [], []
    for order, node_id in enumerate(sorted(api, key=lambda n: (depth[n], int(n)))):
        node = api[node_id]
        definition = object_info[node["class_type"]]
        column = depth[node_id]
        rows[column] = rows.get(column, 0)
        inputs, widgets = [], []
        for name, kind, is_widget, options in _inputs(definition):
            value = node["inputs"].get(name)
            if is_widget:  # a linked widget keeps its default (the editor shows it greyed out)
                widgets.append(options.get("default") if _is_link(value) else value)
                widgets += ["fixed"] if _has_control(name, kind, options) else []
            if _is_link(value):
                link_id = len(links) + 1
                source = api[str(value[0])]
                out_type = object_info[source["class_type"]]["output"][value[1]]
                links.append([link_id, int(value[0]), value[1], int(node_id), len(inputs), out_type])
                inputs.append({"name": name, "type": kind, "link": link_id} | _widget(name, is_widget))
            elif not is_widget:
                inputs.append({"name": name, "type": kind, "link": None})
        outputs = [
            {"name": label, "type": kind, "links": [], "slot_index": slot}
            for slot, (kind, label) in enumerate(
                zip(definition["output"], definition["output_name"], strict=True)
            )
        ]
        height = 46 + 24 * len(widgets) + 22 * max(len(inputs), len(outputs), 1)
        height += 220 if any(key in str(definition.get("input")) for key in _UPLOAD_KEYS) else 0
        nodes.append({
            "id": int(node_id), "type": node["class_type"],
            "pos": [40 + column * _COLUMN, 40 + rows[column]], "size": [340, height],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "title": node.get("_meta", {}).get("title", definition.get("display_name")),
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        })  # fmt: skip
        rows[column] += height + _ROW
    by_id = {n["id"]: n for n in nodes}
    for link in links:
        by_id[link[1]]["outputs"][link[2]]["links"].append(link[0])
    return {
        "last_node_id": max(by_id), "last_link_id": len(links), "nodes": nodes, "links": links,
        "groups": [], "config": {}, "extra": {}, "version": 0.4,
    }  # fmt: skip


def _widget(name: str, is_widget: bool) -> dict[str, Any]:
    return {"widget": {"name": name}} if is_widget else {}


def api_from_ui(ui: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, Any]:
    """The API-format workflow the editor queues for a UI graph (titles kept in ``_meta``)."""
    links = {link[0]: link for link in ui["links"]}
    api: dict[str, Any] = {}
    for node in ui["nodes"]:
        definition = object_info[node["type"]]
        values = iter(node.get("widgets_values", []))
        inputs: dict[str, Any] = {}
        for name, kind, is_widget, options in _inputs(definition):
            if is_widget:
                inputs[name] = next(values, None)
                if _has_control(name, kind, options):
                    next(values, None)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        inputs = {k: v for k, v in inputs.items() if v is not None}
        api[str(node["id"])] = {
            "class_type": node["type"],
            "_meta": {"title": node.get("title")},
            "inputs": inputs,
        }
    return api
