"""The example workflows in ComfyUI's UI (graph) format, made from their API-format twins.

The API files (`*.api.json`) are the source; the UI files (`*.json`, what "Load" and drag-and-drop
take, with node positions and links) are generated from them with the node definitions of a
live ComfyUI (its /object_info, or the same information gathered in-process by
tests/test_comfy_integration.py), because the UI format stores widget values by position:

    python examples/comfyui/ui_format.py object_info.json     # object_info.json: GET /object_info

`ui_to_api` is the inverse (what the ComfyUI frontend does when it queues a graph); the
integration test checks the round trip against a real ComfyUI.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
COLUMN_WIDTH, ROW_HEIGHT = 380, 300


def node_info_of(cls) -> dict:
    """/object_info-style entry of a loaded node class (run inside ComfyUI)."""
    inputs = cls.INPUT_TYPES()
    types = list(cls.RETURN_TYPES)
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return {"input": json.loads(json.dumps(inputs, default=str)), "output": types, "output_name": names}


def compact_info(info: dict) -> dict:
    """The part of /object_info the conversion needs (input names, widget kinds, seed controls,
    outputs), without option lists such as the file names of one installation."""
    out = {}
    for cls, meta in sorted(info.items()):
        inputs = {}
        for section in ("required", "optional"):
            if section in meta["input"]:
                inputs[section] = {}
                for name, kind, opts in _input_specs({"input": {section: meta["input"][section]}}):
                    keep = {"control_after_generate": True} if _has_control(name, kind, opts) else {}
                    inputs[section][name] = [kind, keep]
        out[cls] = {"input": inputs, "output": meta["output"], "output_name": meta["output_name"]}
    return out


def _input_specs(info: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of every declared input, required first, in declaration order."""
    out = []
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, "COMBO" if isinstance(kind, list) else kind, opts))
    return out


def _has_control(name: str, kind: str, opts: dict) -> bool:
    """INT seeds get a "control after generate" widget whose value follows theirs in widgets_values."""
    return kind == "INT" and bool(opts.get("control_after_generate") or name in ("seed", "noise_seed"))


def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(nid: str) -> int:
        if nid not in depth:
            srcs = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((visit(str(s)) for s in srcs), default=-1)
        return depth[nid]

    for nid in api:
        visit(nid)
    return depth


def api_to_ui(api: dict, info: dict) -> dict:
    """UI graph of an API-format workflow; node ids kept, nodes laid out in columns by depth."""
    depth = _depths(api)
    rows: dict[int, int] = {}
    nodes, links = {}, []
    for nid in sorted(api, key=lambda n: (depth[n], int(n))):
        node = api[nid]
        cls = node["class_type"]
        meta = info[cls]
        col = depth[nid]
        row = rows.get(col, 0)
        rows[col] = row + 1
        nodes[nid] = {
            "id": int(nid), "type": cls, "pos": [40 + COLUMN_WIDTH * col, 40 + ROW_HEIGHT * row], "size": [340, 200],
            "flags": {}, "order": 0, "mode": 0, "inputs": [],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                        for i, (n, t) in enumerate(zip(meta["output_name"], meta["output"]))],
            "properties": {"Node name for S&R": cls}, "widgets_values": [],
        }
        if "_meta" in node and "title" in node["_meta"]:
            nodes[nid]["title"] = node["_meta"]["title"]
    for order, nid in enumerate(sorted(api, key=lambda n: (depth[n], int(n)))):
        ui = nodes[nid]
        ui["order"] = order
        for name, kind, opts in _input_specs(info[api[nid]["class_type"]]):
            value = api[nid]["inputs"].get(name)
            if isinstance(value, list):
                src, slot = str(value[0]), int(value[1])
                link_id = len(links) + 1
                src_type = nodes[src]["outputs"][slot]["type"]
                entry = {"name": name, "type": src_type, "link": link_id}
                if kind in WIDGET_TYPES:
                    entry["widget"] = {"name": name}
                links.append([link_id, int(src), slot, int(nid), len(ui["inputs"]), src_type])
                ui["inputs"].append(entry)
                nodes[src]["outputs"][slot]["links"].append(link_id)
            elif kind in WIDGET_TYPES:
                if value is None:
                    value = opts.get("default")
                ui["widgets_values"].append(value)
                if _has_control(name, kind, opts):
                    ui["widgets_values"].append("fixed")
            elif value is None and name in info[api[nid]["class_type"]]["input"].get("required", {}):
                raise ValueError(f"node {nid} ({api[nid]['class_type']}): required input {name!r} is not connected")
    return {
        "last_node_id": max(int(n) for n in api), "last_link_id": len(links),
        "nodes": [nodes[n] for n in sorted(nodes, key=int)], "links": links,
        "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4,
    }


def ui_to_api(ui: dict, info: dict) -> dict:
    """API workflow of a UI graph, as the frontend builds the queued prompt (widgets by position)."""
    links = {lk[0]: lk for lk in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        cls = node["type"]
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, kind, opts in _input_specs(info[cls]):
            if name in linked:
                lk = linked[name]
                inputs[name] = [str(lk[1]), lk[2]]
            elif kind in WIDGET_TYPES and values:
                inputs[name] = values.pop(0)
                if _has_control(name, kind, opts):
                    values.pop(0)
        api[str(node["id"])] = {"class_type": cls, "inputs": inputs}
        if "title" in node:
            api[str(node["id"])]["_meta"] = {"title": node["title"]}
    return api


def write_ui_files(info: dict) -> list[Path]:
    """Regenerate every `<name>.json` UI file beside its `<name>.api.json`, and node_info.json
    (the compact node definitions they were made with, for the offline consistency test)."""
    info = compact_info(info)
    (HERE / "node_info.json").write_text(json.dumps(info, indent=1) + "\n")
    written = []
    for api_path in sorted(HERE.glob("*.api.json")):
        ui_path = api_path.with_name(api_path.name.replace(".api.json", ".json"))
        ui_path.write_text(json.dumps(api_to_ui(json.loads(api_path.read_text()), info), indent=1) + "\n")
        written.append(ui_path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/comfyui/ui_format.py OBJECT_INFO.json  (GET /object_info of a running ComfyUI)")
    for p in write_ui_files(json.loads(Path(sys.argv[1]).read_text())):
        print(p.name)
