"""ComfyUI workflow files: the UI format (what the canvas saves and loads) -> the API format (what the executor runs),
and a validator of UI files against the host's node registry.

No host import at module level: ``node_defs`` is a mapping ``{class_type: node class}`` with the usual ComfyUI
declarations (``INPUT_TYPES()``, ``RETURN_TYPES``, ``RETURN_NAMES``), normally
``host.engine().nodes.NODE_CLASS_MAPPINGS``. The file-presence helpers (``missing_files``) import the host's
``folder_paths`` lazily.

UI format (frontend ``version`` 0.4)::

    {"last_node_id", "last_link_id",
     "nodes": [{"id", "type", "pos", "size", "flags", "order", "mode",
                "inputs":  [{"name", "type", "link"} ...],             # sockets (and widgets converted to sockets)
                "outputs": [{"name", "type", "links", "slot_index"} ...],
                "properties": {"Node name for S&R": type}, "widgets_values": [...]}],
     "links": [[id, from_node, from_slot, to_node, to_slot, type] ...],
     "groups", "config", "extra", "version"}

Widget values (``widget_slots``): one per input that the frontend shows as a widget (INT / FLOAT / STRING / BOOLEAN /
combo), required inputs first, then optional ones, in declaration order; plus what the frontend adds on its own:

* ``control_after_generate`` ("fixed" / "increment" / "decrement" / "randomize") right after an INT input named
  ``seed`` or ``noise_seed`` (or any input declaring ``control_after_generate``);
* the ``upload`` button ("image") after the required inputs of a node with an ``image_upload`` input (LoadImage:
  ``["example.png", "image"]``).

A widget converted to a socket and fed by a link keeps its slot in ``widgets_values`` (the frontend still serialises
it); files that leave linked widgets out of ``widgets_values`` are accepted too (the count decides which layout).

Frontend-only nodes: ``Note`` / ``MarkdownNote`` (dropped), ``Reroute`` (links followed through it),
``PrimitiveNode`` (its value is written into the widget input it feeds). Muted nodes (mode 2) are dropped; bypassed
nodes (mode 4) pass their first input of the matching type through.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Any, Iterable, Mapping, Optional

UI_ONLY_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
COMMENT_NODES = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4

# inputs whose combo lists files in a model folder: input name -> folder_paths folder name
MODEL_FILE_INPUTS = {
    "ckpt_name": "checkpoints", "vae_name": "vae", "lora_name": "loras", "clip_name": "clip", "clip_name1": "clip",
    "clip_name2": "clip", "clip_name3": "clip", "unet_name": "diffusion_models", "control_net_name": "controlnet",
    "style_model_name": "style_models", "gligen_name": "gligen", "upscale_model_name": "upscale_models",
    "hypernetwork_name": "hypernetworks", "config_name": "configs",
}
_FILE_LIKE = re.compile(r"^[^\x00]+\.[A-Za-z0-9]{1,12}$")


# --------------------------------------------------------------------------------------------------------- schema
def _combo_options(spec) -> Optional[list]:
    """The option list of a combo input declaration (legacy list form or ``("COMBO", {"options": [...]})``)."""
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    if isinstance(kind, (list, tuple)):
        return list(kind)
    if kind == "COMBO":
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return list(opts.get("options", []))
    return None


def _input_type(spec) -> str:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return "COMBO" if isinstance(kind, (list, tuple)) else str(kind)


def _opts(spec) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def declared_inputs(cls) -> list:
    """``[(name, type, options, spec, required)]`` in the order the frontend builds them (required, then optional)."""
    decl = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in (decl.get(section) or {}).items():
            out.append((name, _input_type(spec), _opts(spec), spec, section == "required"))
    return out


def is_widget(type_name: str, opts: dict) -> bool:
    return type_name in WIDGET_TYPES and not opts.get("forceInput", False)


def widget_slots(cls) -> list:
    """``[(input_name, kind)]`` for every entry of ``widgets_values``; kind: "value", "control" (control_after_generate
    of the input before it) or "upload" (the image upload button)."""
    slots = []
    decl = declared_inputs(cls)
    upload_after_required = any(opts.get("image_upload") for _n, _t, opts, _s, req in decl if req)
    upload_done = False
    for name, type_name, opts, _spec, required in decl:
        if not required and upload_after_required and not upload_done:
            slots.append(("upload", "upload"))
            upload_done = True
        if not is_widget(type_name, opts):
            continue
        slots.append((name, "value"))
        if (type_name == "INT" and name in SEED_NAMES) or opts.get("control_after_generate"):
            slots.append((name, "control"))
    if upload_after_required and not upload_done:
        slots.append(("upload", "upload"))
    return slots


def output_types(cls) -> list:
    return [str(t) if not isinstance(t, (list, tuple)) else "COMBO" for t in cls.RETURN_TYPES]


def output_names(cls) -> list:
    names = getattr(cls, "RETURN_NAMES", None) or output_types(cls)
    return [str(n) for n in names]


def types_match(out_type: str, in_type: str) -> bool:
    """The frontend's rule: equal, either side "*", or overlapping comma-separated unions ("IMAGE,MASK")."""
    if out_type == "*" or in_type == "*":
        return True
    a = {t.strip() for t in str(out_type).split(",")}
    b = {t.strip() for t in str(in_type).split(",")}
    return bool(a & b)


def is_file_input(name: str, opts: dict, options: Optional[list]) -> bool:
    """A combo that lists files on this machine: its presence is checked by ``missing_files``, not ``validate_ui``."""
    if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"):
        return True
    return name in MODEL_FILE_INPUTS


# ----------------------------------------------------------------------------------------------------- UI helpers
def _nodes_by_id(ui: dict) -> dict:
    return {int(n["id"]): n for n in ui.get("nodes", [])}


def _links_by_id(ui: dict) -> dict:
    out = {}
    for link in ui.get("links", []) or []:
        if isinstance(link, dict):  # newer frontends may save links as objects
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type", "*")]
        out[int(link[0])] = list(link)
    return out


def _linked_inputs(node: dict) -> dict:
    return {i["name"]: i["link"] for i in node.get("inputs", []) or [] if i.get("link") is not None}


def map_widget_values(cls, node: dict) -> tuple:
    """``({input_name: value}, {input_name: control}, problems)`` from a node's ``widgets_values``.

    Accepts both layouts: every widget slot present (the frontend's), or the linked widget inputs left out.
    """
    values = node.get("widgets_values")
    if values is None:
        values = []
    if isinstance(values, dict):  # some nodes save widgets by name
        return dict(values), {}, []
    slots = widget_slots(cls)
    linked = set(_linked_inputs(node))
    unlinked = [s for s in slots if s[0] not in linked]
    if len(values) == len(slots):
        layout = slots
    elif len(values) == len(unlinked):
        layout = unlinked
    else:
        names = [f"{n}({k})" if k != "value" else n for n, k in slots]
        return {}, {}, [f"has {len(values)} widget values, expected {len(slots)}: {names}"]
    mapped, controls = {}, {}
    for (name, kind), value in zip(layout, values):
        if kind == "value":
            mapped[name] = value
        elif kind == "control":
            controls[name] = value
    return mapped, controls, []


# ------------------------------------------------------------------------------------------------------ validation
def _check_value(name: str, type_name: str, opts: dict, spec, value) -> Optional[str]:
    if type_name == "COMBO":
        options = _combo_options(spec) or []
        if is_file_input(name, opts, options):
            if not isinstance(value, str) or not _FILE_LIKE.match(value):
                return f"{name}: {value!r} is not a file name"
            return None
        if value not in options:
            shown = options if len(options) <= 12 else options[:12] + ["..."]
            return f"{name}: {value!r} is not one of {shown}"
        return None
    if type_name == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: {value!r} is not a boolean"
    if type_name == "STRING":
        return None if isinstance(value, str) else f"{name}: {value!r} is not a string"
    if type_name in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}: {value!r} is not a number"
        if not math.isfinite(value):
            return f"{name}: {value!r} is not finite"
        if type_name == "INT" and float(value) != int(value):
            return f"{name}: {value!r} is not an integer"
        lo, hi = opts.get("min"), opts.get("max")
        if lo is not None and value < lo:
            return f"{name}: {value!r} is below the minimum {lo}"
        if hi is not None and value > hi:
            return f"{name}: {value!r} is above the maximum {hi}"
    return None


def validate_ui(ui: dict, node_defs: Mapping[str, Any]) -> list:
    """Problems of a UI-format workflow against the registry ``node_defs`` (empty list: valid).

    Checks: the top-level layout; every node type is registered (or frontend-only); ids are unique; every link joins
    existing nodes and slots, agrees with both ends' ``links`` / ``link`` fields, and connects an output of the input's
    declared type ("*" and comma unions allowed; the link's own type and the slots' types are checked too); required
    sockets are connected; every widget value fits its input (combo option, number within min/max, integer, string,
    boolean) and the count of widget values is right. File names (checkpoints, images) are checked for form only;
    ``missing_files`` says which are absent on this machine.
    """
    problems: list = []
    for key in ("nodes", "links", "version"):
        if key not in ui:
            problems.append(f"workflow: missing top-level key {key!r}")
    nodes = ui.get("nodes", []) or []
    ids = [n.get("id") for n in nodes]
    if len(set(ids)) != len(ids):
        problems.append(f"workflow: duplicate node ids {sorted({i for i in ids if ids.count(i) > 1})}")
    by_id = _nodes_by_id(ui)
    links = _links_by_id(ui)
    if "last_node_id" in ui and ids and max(int(i) for i in ids) > int(ui["last_node_id"]):
        problems.append(f"workflow: last_node_id {ui['last_node_id']} < largest node id {max(ids)}")
    if "last_link_id" in ui and links and max(links) > int(ui["last_link_id"]):
        problems.append(f"workflow: last_link_id {ui['last_link_id']} < largest link id {max(links)}")

    def where(node):
        return f"node {node.get('id')} ({node.get('type')})"

    def source_type(node, slot) -> Optional[str]:
        cls = node_defs.get(node.get("type"))
        if cls is not None:
            types = output_types(cls)
            return types[slot] if 0 <= slot < len(types) else None
        outs = node.get("outputs") or []
        return outs[slot].get("type") if 0 <= slot < len(outs) else None

    for node in nodes:
        ntype = node.get("type")
        cls = node_defs.get(ntype)
        if cls is None and ntype not in UI_ONLY_NODES:
            problems.append(f"{where(node)}: unknown node type {ntype!r} (not registered in the host or the pack)")
            continue
        for slot, out in enumerate(node.get("outputs") or []):
            for lid in out.get("links") or []:
                link = links.get(int(lid))
                if link is None:
                    problems.append(f"{where(node)}: output {out.get('name')!r} lists link {lid}, which does not exist")
                elif int(link[1]) != int(node["id"]) or int(link[2]) != slot:
                    problems.append(f"{where(node)}: output {slot} lists link {lid}, which starts at node {link[1]} "
                                    f"slot {link[2]}")
        for inp in node.get("inputs") or []:
            lid = inp.get("link")
            if lid is not None and int(lid) not in links:
                problems.append(f"{where(node)}: input {inp.get('name')!r} names link {lid}, which does not exist")
        if ntype in COMMENT_NODES:
            vals = node.get("widgets_values") or []
            if len(vals) != 1 or not isinstance(vals[0], str):
                problems.append(f"{where(node)}: a note holds exactly one text widget value")
            continue
        if cls is None:
            continue
        declared = {name: (t, opts, spec, req) for name, t, opts, spec, req in declared_inputs(cls)}
        types = output_types(cls)
        outs = node.get("outputs") or []
        if len(outs) != len(types):
            problems.append(f"{where(node)}: {len(outs)} outputs listed, the node has {len(types)}: {types}")
        for slot, out in enumerate(outs[:len(types)]):
            if out.get("type") != types[slot]:
                problems.append(f"{where(node)}: output {slot} has type {out.get('type')!r}, the node returns "
                                f"{types[slot]!r}")
        listed = {}
        for inp in node.get("inputs") or []:
            name = inp.get("name")
            if name not in declared:
                problems.append(f"{where(node)}: input {name!r} is not an input of {ntype}")
                continue
            listed[name] = inp
            dtype = declared[name][0]
            if inp.get("type") not in (dtype, "*") and not (dtype == "COMBO" and inp.get("widget")):
                problems.append(f"{where(node)}: input {name!r} has type {inp.get('type')!r}, declared {dtype!r}")
        for name, (dtype, opts, _spec, req) in declared.items():
            if req and not is_widget(dtype, opts) and (name not in listed or listed[name].get("link") is None):
                problems.append(f"{where(node)}: required input {name!r} ({dtype}) is not connected")
        values, controls, count_problems = map_widget_values(cls, node)
        problems.extend(f"{where(node)}: {p}" for p in count_problems)
        linked = _linked_inputs(node)
        for name, value in values.items():
            if name not in declared:
                problems.append(f"{where(node)}: widget {name!r} is not an input of {ntype}")
                continue
            if name in linked:
                continue  # the link's value wins
            dtype, opts, spec, _req = declared[name]
            msg = _check_value(name, dtype, opts, spec, value)
            if msg:
                problems.append(f"{where(node)}: {msg}")
        for name, value in controls.items():
            if value not in CONTROL_VALUES:
                problems.append(f"{where(node)}: control_after_generate of {name!r} is {value!r}, not one of "
                                f"{list(CONTROL_VALUES)}")

    for lid, link in links.items():
        _lid, src, sslot, dst, dslot, ltype = link[:6]
        s, d = by_id.get(int(src)), by_id.get(int(dst))
        if s is None or d is None:
            problems.append(f"link {lid}: joins missing node {src if s is None else dst}")
            continue
        d_inputs = d.get("inputs") or []
        if not 0 <= int(dslot) < len(d_inputs):
            problems.append(f"link {lid}: {where(d)} has no input slot {dslot}")
            continue
        target = d_inputs[int(dslot)]
        if target.get("link") is None or int(target.get("link")) != int(lid):
            problems.append(f"link {lid}: {where(d)} input {target.get('name')!r} does not name this link")
        s_outs = s.get("outputs") or []
        if not 0 <= int(sslot) < len(s_outs):
            problems.append(f"link {lid}: {where(s)} has no output slot {sslot}")
            continue
        if int(lid) not in [int(x) for x in (s_outs[int(sslot)].get("links") or [])]:
            problems.append(f"link {lid}: {where(s)} output {sslot} does not list this link")
        out_type = source_type(s, int(sslot))
        if s.get("type") == "Reroute" or d.get("type") in ("Reroute", "PrimitiveNode"):
            continue  # frontend-only pass-throughs take the type of what they connect
        d_cls = node_defs.get(d.get("type"))
        if d_cls is None:
            continue
        decl = {n: t for n, t, _o, _s, _r in declared_inputs(d_cls)}
        in_type = decl.get(target.get("name"))
        if in_type is None:
            continue  # reported above
        if s.get("type") == "PrimitiveNode":
            if not is_widget(in_type, {}):
                problems.append(f"link {lid}: a PrimitiveNode feeds {where(d)} input {target.get('name')!r} of "
                                f"type {in_type}, which is not a widget")
            continue
        if out_type is None or not types_match(out_type, in_type):
            problems.append(f"link {lid}: {where(s)} output {sslot} ({out_type}) does not fit {where(d)} input "
                            f"{target.get('name')!r} ({in_type})")
        elif ltype not in ("*", out_type):
            problems.append(f"link {lid}: recorded type {ltype!r}, the output is {out_type!r}")
    return problems


# ------------------------------------------------------------------------------------------------------ conversion
def _resolve(source: tuple, by_id: dict, links: dict, node_defs, want_type: Optional[str], seen=None):
    """Follow a link source through Reroute / bypassed nodes: ``("link", node_id, slot)``, ``("value", v)`` (a
    PrimitiveNode) or None (the source is muted, missing or a bypass with nothing to pass through)."""
    node_id, slot = source
    seen = set() if seen is None else seen
    if node_id in seen:
        raise ValueError(f"link cycle through node {node_id}")
    seen.add(node_id)
    node = by_id.get(node_id)
    if node is None:
        return None
    ntype = node.get("type")
    if ntype == "PrimitiveNode":
        vals = node.get("widgets_values") or []
        return ("value", vals[0]) if vals else None
    if ntype == "Reroute" or node.get("mode", MODE_ALWAYS) == MODE_BYPASS:
        out_type = want_type
        if ntype != "Reroute":
            cls = node_defs.get(ntype)
            types = output_types(cls) if cls is not None else []
            out_type = types[slot] if slot < len(types) else want_type
        for inp in node.get("inputs") or []:
            lid = inp.get("link")
            if lid is None:
                continue
            if ntype == "Reroute" or out_type is None or types_match(inp.get("type", "*"), out_type):
                link = links[int(lid)]
                return _resolve((int(link[1]), int(link[2])), by_id, links, node_defs, want_type, seen)
        return None
    if node.get("mode", MODE_ALWAYS) == MODE_NEVER or ntype in COMMENT_NODES:
        return None
    return ("link", node_id, slot)


def ui_to_api(ui: dict, node_defs: Mapping[str, Any]) -> dict:
    """The API-format prompt ``{id: {"class_type", "inputs", "_meta"}}`` of a UI-format workflow.

    Notes, Reroutes and PrimitiveNodes are frontend-only (dropped; links followed / values written in); muted nodes
    are dropped, bypassed ones passed through. Widget values map onto their inputs (control_after_generate and upload
    entries skipped); linked inputs become ``[source_id, slot]``; unconnected optional sockets are left out.
    """
    by_id = _nodes_by_id(ui)
    links = _links_by_id(ui)
    prompt: dict = {}
    for node in sorted(ui.get("nodes", []), key=lambda n: (n.get("order", 0), int(n["id"]))):
        ntype = node.get("type")
        if ntype in UI_ONLY_NODES or node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
            continue
        cls = node_defs.get(ntype)
        if cls is None:
            raise KeyError(f"node {node['id']}: unknown node type {ntype!r}")
        values, _controls, problems = map_widget_values(cls, node)
        if problems:
            raise ValueError(f"node {node['id']} ({ntype}): {problems[0]}")
        declared = {name: t for name, t, _o, _s, _r in declared_inputs(cls)}
        inputs = {k: copy.deepcopy(v) for k, v in values.items() if k in declared}
        for inp in node.get("inputs") or []:
            lid = inp.get("link")
            name = inp.get("name")
            if lid is None or name not in declared:
                continue
            link = links[int(lid)]
            resolved = _resolve((int(link[1]), int(link[2])), by_id, links, node_defs, declared[name])
            if resolved is None:
                inputs.pop(name, None)
            elif resolved[0] == "value":
                inputs[name] = resolved[1]
            else:
                inputs[name] = [str(resolved[1]), int(resolved[2])]
        entry = {"class_type": ntype, "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node["id"])] = entry
    return prompt


# ------------------------------------------------------------------------------------------------- files on disk
def file_inputs(ui: dict, node_defs: Mapping[str, Any]) -> list:
    """``[(node_id, class_type, input_name, file_name, folder)]`` for every file-listing combo value in the workflow;
    folder: a ``folder_paths`` folder name, or "input" for uploaded images."""
    out = []
    for node in ui.get("nodes", []):
        cls = node_defs.get(node.get("type"))
        if cls is None or node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
            continue
        values, _c, problems = map_widget_values(cls, node)
        if problems:
            continue
        linked = _linked_inputs(node)
        for name, dtype, opts, spec, _req in declared_inputs(cls):
            if dtype != "COMBO" or name in linked or name not in values:
                continue
            if is_file_input(name, opts, _combo_options(spec)):
                folder = "input" if opts.get("image_upload") else MODEL_FILE_INPUTS.get(name, "input")
                out.append((int(node["id"]), node["type"], name, values[name], folder))
    return out


def missing_files(ui: dict, node_defs: Mapping[str, Any]) -> list:
    """The ``file_inputs`` entries whose file is not on this machine (through the host's ``folder_paths``)."""
    import os

    try:
        from comfy.cmd import folder_paths  # the PyPI fork
    except ImportError:  # pragma: no cover - upstream ComfyUI
        import folder_paths  # type: ignore

    missing = []
    for entry in file_inputs(ui, node_defs):
        _nid, _t, _name, value, folder = entry
        if folder == "input":
            path = folder_paths.get_annotated_filepath(value)
            present = path is not None and os.path.isfile(path)
        else:
            try:
                path = folder_paths.get_full_path(folder, value)
            except Exception:  # unknown folder name in this host
                path = None
            present = path is not None and os.path.isfile(path)
        if not present:
            missing.append(entry)
    return missing


def check_all(paths: Iterable, node_defs: Mapping[str, Any]) -> dict:
    """``{path: problems}`` for UI workflow files (a convenience for scripts)."""
    import json

    return {str(p): validate_ui(json.loads(open(p, encoding="utf-8").read()), node_defs) for p in paths}
