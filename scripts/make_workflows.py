"""Write the example workflows in workflows/ (ComfyUI UI format, drag onto the canvas) from compact descriptions.

    .venv/bin/python scripts/make_workflows.py            # regenerate workflows/*.json
    .venv/bin/python scripts/make_workflows.py --check    # exit 1 if a committed file differs from what it generates

Widget order, defaults, socket lists and output types come from the node declarations the host registered (the test
host of tests/host.py: the real ComfyUI engine with this pack loaded), so the files match the nodes. Optional nodes
(GNRIInvert, PreciseInvInvert, InversionReport) are used when registered; rerun after registering new nodes.
tests/test_workflows.py checks the committed files equal this script's output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = ROOT / "workflows"
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from workflow_format import declared_inputs, is_widget, output_names, output_types, widget_slots  # noqa: E402

REFERENCE_STEPS = 10
REFERENCE_SCHEDULER = "karras"     # what the nodes' default "auto" takes on the EPS reference model at T = 10 (named:
                                   # BasicScheduler, which has no "auto", shares it); starts at sigma_max at every T
INPUTS_GROUP = "Inputs: model, prompts, image"
EDIT_DENOISE = 0.6
REFERENCE_SETUP = (
    "Needs: nothing. Drop it onto ComfyUI and press Run: the model is the pack's bundled reference model (Load "
    "Inversion Reference Model: a tiny 32x32 pixel-space diffusion model; prompts: cat, astronaut, coffee, rocket, "
    "galaxy, bricks, grass, gravel, or empty) and the image ({image}) comes from the pack's held-out set through Load "
    "Inversion Reference Image, so nothing is copied into ComfyUI/input/. To try your own picture, swap in a Load "
    "Image node (32x32 images only).")


def checkpoint_setup(ckpt: str, size: int) -> str:
    return (f"Needs: ComfyUI/models/checkpoints/{ckpt} (change the name in Load Checkpoint if yours differs). "
            f"Image: any image in ComfyUI/input/ (example.png by default); Upscale Image resizes it to {size}x{size}.")


# ------------------------------------------------------------------------------------------------------ builder
class Out:
    def __init__(self, node: "Node", slot: int):
        self.node, self.slot = node, slot

    @property
    def type(self) -> str:
        return self.node.out_types[self.slot]


class Node:
    def __init__(self, wf: "Workflow", nid: int, type_: str, title: Optional[str]):
        self.wf, self.id, self.type, self.title = wf, nid, type_, title
        self.group: Optional[str] = wf.group_title
        self.inputs: dict = {}      # socket name -> Out
        self.widgets: dict = {}     # widget name -> value
        cls = wf.defs.get(type_)
        self.cls = cls
        self.out_types = output_types(cls) if cls is not None else []
        self.out_names = output_names(cls) if cls is not None else []
        self.bus_slot = 0           # a Reroute's place in its bus

    def out(self, key: Any = 0) -> Out:
        if isinstance(key, str):
            if key not in self.out_names:
                raise KeyError(f"{self.type} has no output {key!r}: {self.out_names}")
            key = self.out_names.index(key)
        return Out(self, int(key))

    __getitem__ = out


class Workflow:
    """Nodes with keyword inputs: an ``Out`` for a socket, a plain value for a widget (defaults fill the rest)."""

    def __init__(self, defs, note: str):
        self.defs = defs
        self.nodes: list = []
        self.note = note
        self.group_title: Optional[str] = None    # None: placed by column (inputs / the rest), see to_ui

    def group(self, title: str) -> "Workflow":
        """Nodes added from now on belong to the group ``title`` (a band of the layout, a titled box on the canvas)."""
        self.group_title = title
        return self

    def has(self, type_: str) -> bool:
        return type_ in self.defs

    def reroute(self, src: Out, slot: int) -> Out:
        """A frontend Reroute carrying ``src`` (a bus of shared inputs at the left edge of a group: vertical links
        down the bus instead of long diagonal ones across the canvas). ``slot``: its row in the bus."""
        node = Node(self, len(self.nodes) + 2, "Reroute", None)
        node.inputs["*"] = src
        node.out_types, node.out_names, node.bus_slot = [src.type], [""], slot
        self.nodes.append(node)
        return node[0]

    def add(self, type_: str, title: Optional[str] = None, **kw) -> Node:
        if type_ not in self.defs:
            raise KeyError(f"node type {type_!r} is not registered")
        node = Node(self, len(self.nodes) + 2, type_, title)  # id 1 is the note
        decl = {name: (t, opts, spec) for name, t, opts, spec, _req in declared_inputs(node.cls)}
        for key, value in kw.items():
            name = key.rstrip("_")  # lambda_ -> lambda
            if name not in decl:
                raise KeyError(f"{type_} has no input {name!r}: {sorted(decl)}")
            t, opts, _spec = decl[name]
            if isinstance(value, Out):
                if is_widget(t, opts):
                    raise TypeError(f"{type_}.{name} is a widget; this builder does not convert widgets to sockets")
                node.inputs[name] = value
            else:
                if not is_widget(t, opts):
                    raise TypeError(f"{type_}.{name} ({t}) needs a connection, got {value!r}")
                node.widgets[name] = value
        self.nodes.append(node)
        return node

    # ------------------------------------------------------------------------------------------------ to UI JSON
    def _widget_values(self, node: Node) -> list:
        decl = {name: (t, opts, spec) for name, t, opts, spec, _req in declared_inputs(node.cls)}
        values = []
        for name, kind in widget_slots(node.cls):
            if kind == "control":
                values.append("fixed")
            elif kind == "upload":
                values.append("image")
            elif name in node.widgets:
                values.append(node.widgets[name])
            else:
                t, opts, spec = decl[name]
                if "default" in opts:
                    values.append(opts["default"])
                elif t == "COMBO":
                    values.append(list(spec[0])[0])
                else:
                    values.append({"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[t])
        return values

    def to_ui(self) -> dict:
        """Layout: the note across the top; below it one horizontal band per group, in the order the groups were
        started, each in a titled group box. Within a band a node's column is its depth (longest path from a source
        node), so every link runs left to right; nodes of one band in one column stack."""
        depth: dict = {}

        def d(n: Node) -> int:
            if n.id not in depth:
                if n.type == "Reroute":      # a bus of pass-throughs: in the column of what it carries
                    depth[n.id] = d(n.inputs["*"].node)
                else:
                    depth[n.id] = 1 + max((d(o.node) for o in n.inputs.values()), default=-1)
            return depth[n.id]

        for n in self.nodes:
            d(n)
        # a node without inputs (a SAMPLER, DisableNoise, a mask) sits in the column before its first consumer
        consumers: dict = {}
        for n in self.nodes:
            for o in n.inputs.values():
                consumers.setdefault(o.node.id, []).append(n)
        column = dict(depth)
        for n in self.nodes:
            if not n.inputs and consumers.get(n.id):
                column[n.id] = max(0, min(depth[c.id] for c in consumers[n.id]) - 1)
        order = sorted(self.nodes, key=lambda n: (depth[n.id], n.id))
        links, ui_nodes = [], {}
        link_id = 0
        out_links: dict = {}
        in_links: dict = {}
        for n in self.nodes:
            for name, src in n.inputs.items():
                link_id += 1
                links.append([link_id, src.node.id, src.slot, n.id, None, src.type])
                out_links.setdefault((src.node.id, src.slot), []).append(link_id)
                in_links[(n.id, name)] = links[-1]
        entries: dict = {}
        for idx, n in enumerate(order):
            if n.type == "Reroute":
                link = in_links[(n.id, "*")]
                link[4] = 0
                entries[n.id] = {"id": n.id, "type": "Reroute", "pos": [0, 0], "size": [75, 26], "flags": {},
                                 "order": idx + 1, "mode": 0, "inputs": [{"name": "", "type": "*", "link": link[0]}],
                                 "outputs": [{"name": "", "type": n.out_types[0], "links": out_links.get((n.id, 0), []),
                                              "slot_index": 0}],
                                 "properties": {"showOutputText": False, "horizontal": False}}
                continue
            sockets = [(name, t, opts) for name, t, opts, _s, _r in declared_inputs(n.cls) if not is_widget(t, opts)]
            inputs = []
            for slot, (name, t, _opts) in enumerate(sockets):
                link = in_links.get((n.id, name))
                if link is not None:
                    link[4] = slot
                inputs.append({"name": name, "type": t, "link": link[0] if link else None})
            outputs = [{"name": nm, "type": t, "links": out_links.get((n.id, i), []), "slot_index": i}
                       for i, (nm, t) in enumerate(zip(n.out_names, n.out_types))]
            widgets = self._widget_values(n)
            multiline = sum(1 for name, t, opts, _s, _r in declared_inputs(n.cls)
                            if t == "STRING" and opts.get("multiline"))
            height = 46 + 22 * max(len(inputs), len(outputs)) + 26 * len(widgets) + 70 * multiline
            if n.type in ("SaveImage", "PreviewImage"):
                height = max(height, 280)
            if n.type == "InversionReport":
                height = max(height, 300)
            entry = {"id": n.id, "type": n.type, "pos": [0, 0], "size": [330, height],
                     "flags": {}, "order": idx + 1, "mode": 0, "inputs": inputs, "outputs": outputs,
                     "properties": {"Node name for S&R": n.type}, "widgets_values": widgets}
            if n.title:
                entry["title"] = n.title
            entries[n.id] = entry
        for n in self.nodes:      # nodes added outside any group: the inputs (columns 0-1) and the rest
            if n.group is None:
                n.group = INPUTS_GROUP if column[n.id] <= 1 else "Inversion, replay and outputs"
        groups_in_order = []
        for n in sorted(self.nodes, key=lambda n: n.group != INPUTS_GROUP):
            if n.group not in groups_in_order:
                groups_in_order.append(n.group)
        col_w, gap, pad, title_h = 420, 40, 20, 46       # 90 px between columns: room for a Reroute bus
        width = 40 + col_w * (max(column.values(), default=0) + 1)
        note_w = max(width - 40 - gap, 700)
        note_h = 60 + 20 * (len(self.note) * 7 // note_w + self.note.count("\n") + 1)
        y = 40 + note_h + 60
        groups = []
        for title in groups_in_order:
            members = [n for n in order if n.group == title and n.type != "Reroute"]
            bus = [n for n in order if n.group == title and n.type == "Reroute"]
            col_y: dict = {}
            if bus:
                left_col = min(column[n.id] for n in members)
                for r in bus:
                    entries[r.id]["pos"] = [40 + col_w * left_col - 82, y + title_h + 34 * r.bus_slot]
            for n in members:
                c = column[n.id]
                top = col_y.get(c, y + title_h)
                entries[n.id]["pos"] = [40 + col_w * c, top]
                col_y[c] = top + entries[n.id]["size"][1] + gap
            xs = [entries[n.id]["pos"][0] for n in members] + [entries[r.id]["pos"][0] for r in bus]
            bottom = max(col_y.values()) - gap
            left, right = min(xs) - pad, max(entries[n.id]["pos"][0] for n in members) + 330 + pad
            groups.append({"title": title, "bounding": [left, y, right - left, bottom - y + pad],
                           "color": "#3f789e" if title != INPUTS_GROUP else "#88A", "font_size": 24, "flags": {}})
            y = bottom + pad + 60
        note = {"id": 1, "type": "Note", "pos": [40, 40], "size": [note_w, note_h], "flags": {}, "order": 0,
                "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""}, "widgets_values": [self.note],
                "title": "About this workflow: what to look at", "color": "#432", "bgcolor": "#653"}
        nodes = [note] + [entries[n.id] for n in self.nodes]
        return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": link_id, "nodes": nodes,
                "links": links, "groups": groups, "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
                "version": 0.4}


# ------------------------------------------------------------------------------------------------ descriptions
def reference_base(wf: Workflow, image: str, prompt: str, model: Optional[str] = None):
    wf.group(INPUTS_GROUP)
    loader = wf.add("InversionReferenceModelLoader", **({"model": model} if model else {}))
    model_out, clip, vae = loader["MODEL"], loader["CLIP"], loader["VAE"]
    img = wf.add("LoadInversionReferenceImage", "Load held-out image", image=image)
    pos = wf.add("CLIPTextEncode", "Source prompt", text=prompt, clip=clip)
    neg = wf.add("CLIPTextEncode", "Negative prompt (empty)", text="", clip=clip)
    latent = wf.add("VAEEncode", pixels=img[0], vae=vae)
    return model_out, vae, pos[0], neg[0], img[0], latent[0]


def decode_and_save(wf: Workflow, latent: Out, vae: Out, tag: str, prefix: str, save: bool = True) -> Node:
    dec = wf.add("VAEDecode", f"Decode ({tag})", samples=latent, vae=vae)
    if save:
        wf.add("SaveImage", f"Save ({tag})", images=dec[0], filename_prefix=prefix)
    else:
        wf.add("PreviewImage", f"Preview ({tag})", images=dec[0])
    return dec


def inversion_methods(wf: Workflow, steps: int, scheduler: str = REFERENCE_SCHEDULER) -> list:
    """``[(tag, node type, widgets)]`` for every inversion node registered, at ``steps`` (other inputs: defaults)."""
    common = {"steps": steps, "scheduler": scheduler, "cfg": 1.0, "denoise": 1.0}
    methods = [("DDIM", "DDIMInvert", dict(common)),
               ("EasyInv", "EasyInvInvert", dict(common, preset="auto")),
               ("Exact", "ExactInvert", dict(common, preset="balanced"))]
    if wf.has("GNRIInvert"):
        methods.append(("GNRI", "GNRIInvert", dict(common)))
    if wf.has("PreciseInvInvert"):
        methods.append(("PreciseInv", "PreciseInvInvert", dict(common, threshold_preset="precise (1e-5)")))
    known = {node for _t, node, _w in methods}
    for name in sorted(wf.defs):       # any other inversion node of the pack, at its defaults
        cls = wf.defs[name]
        if (name.endswith("Invert") and name not in known and getattr(cls, "CATEGORY", "") == "sampling/inversion"
                and tuple(getattr(cls, "RETURN_TYPES", ()))[:1] == ("LATENT",)):
            methods.append((name[:-len("Invert")], name, dict(common)))
    return methods


def reconstruct_all(wf: Workflow, model, vae, pos, neg, img, latent, steps: int, scheduler: str, prefix: str,
                    extra: tuple = ()):
    """One invert -> replay -> decode (-> report) row per inversion method, plus the ``extra`` (tag, node, widgets)
    rows."""
    methods = inversion_methods(wf, steps, scheduler) + list(extra)
    report = wf.has("InversionReport")
    for tag, node_type, widgets in methods:
        wf.group(f"{tag}: invert -> replay -> decode" + (" -> report" if report else ""))
        model, pos, neg, latent, vae, img = (wf.reroute(o, i) for i, o in
                                             enumerate((model, pos, neg, latent, vae, img)))
        inv = wf.add(node_type, f"{tag} invert", model=model, positive=pos, negative=neg, latent=latent, **widgets)
        rec = wf.add("InvertedLatentSampler", f"Replay ({tag})", model=model, positive=pos, negative=neg, cfg=1.0,
                     inverted_latent=inv["inverted_latent"])
        dec = decode_and_save(wf, rec[0], vae, tag, f"{prefix}_{tag.lower().replace(' ', '_')}")
        if report:
            wf.add("InversionReport", f"Report ({tag})", original=img, reconstructed=dec[0],
                   inverted_latent=inv["inverted_latent"])
    return methods, report


def reference_reconstruct_all_methods(defs) -> dict:
    image = "00_cat.png"
    wf = Workflow(defs, "")
    model, vae, pos, neg, img, latent = reference_base(wf, image, "cat")
    methods, report = reconstruct_all(wf, model, vae, pos, neg, img, latent, REFERENCE_STEPS, REFERENCE_SCHEDULER,
                                      "inversion/reference")
    names = ", ".join(tag for tag, _n, _w in methods)
    wf.note = (
        f"WHAT TO LOOK AT: one row per inversion method ({names}). Each row inverts the same image ({REFERENCE_STEPS} "
        f"steps, {REFERENCE_SCHEDULER}, cfg 1, source prompt 'cat') and replays the inverted latent with the Inverted "
        "Latent Sampler and the same prompt: compare each row's saved image with the input (top left). The closer "
        "it is, the smaller that method's inversion error."
        + (" Each row's Inversion Report shows PSNR/SSIM, the cost in model evaluations and seconds, and flags "
           "bad steps." if report else "")
        + (" PreciseInv differentiates through the model and is the slowest (seconds on a CPU even for this tiny "
           "model); GNRI's default needs no gradients (about 3x DDIM)." if wf.has("PreciseInvInvert") else "")
        + "\n\n" + REFERENCE_SETUP.format(image=image))
    return wf.to_ui()


def model_clip(wf: Workflow) -> Out:
    loader = next(n for n in wf.nodes if n.type == "InversionReferenceModelLoader")
    return loader["CLIP"]


def reference_edit(defs) -> dict:
    image = "00_cat.png"
    wf = Workflow(defs, "")
    model, vae, pos, neg, img, latent = reference_base(wf, image, "cat")
    edit = wf.add("CLIPTextEncode", "Edit prompt", text="astronaut", clip=model_clip(wf))
    wf.group("Invert (Exact, partial: denoise 0.6)")
    inv = wf.add("ExactInvert", "Exact invert", model=model, positive=pos, negative=neg, latent=latent,
                 steps=REFERENCE_STEPS, scheduler=REFERENCE_SCHEDULER, cfg=1.0, denoise=EDIT_DENOISE,
                 preset="balanced")
    wf.group("Reconstruction: replay with the source prompt")
    rec = wf.add("InvertedLatentSampler", "Replay (source prompt)", model=model, positive=pos, negative=neg,
                 cfg=1.0, inverted_latent=inv[0])
    decode_and_save(wf, rec[0], vae, "reconstruction", "inversion/reference_reconstruction", save=False)
    wf.group("Edit: replay with the edit prompt")
    ed = wf.add("InvertedLatentSampler", "Replay (edit prompt)", model=model, positive=edit[0], negative=neg,
                cfg=3.0, inverted_latent=inv[0], correction_strength=0.5, source_positive=pos)
    decode_and_save(wf, ed[0], vae, "edit", "inversion/reference_edit")
    wf.note = (
        "WHAT TO LOOK AT: the saved edit (bottom row) against the input image (top left) and the reconstruction "
        "preview (middle row). The image is inverted with its own prompt ('cat', Exact Invert, "
        f"{REFERENCE_STEPS} steps, partial inversion: denoise {EDIT_DENOISE}, so the layout survives), then replayed "
        "with a new prompt ('astronaut', cfg 3) with source correction (strength 0.5; source_positive = the source "
        "prompt, required for correction). Raise denoise towards 1 for a stronger edit, lower it to keep more of "
        "the image.\n\n" + REFERENCE_SETUP.format(image=image))
    return wf.to_ui()


def reference_masked_edit(defs) -> dict:
    image = "02_coffee.png"
    wf = Workflow(defs, "")
    model, vae, pos, neg, img, latent = reference_base(wf, image, "coffee")
    edit = wf.add("CLIPTextEncode", "Edit prompt", text="bricks", clip=model_clip(wf))
    wf.group("Invert (Exact)")
    inv = wf.add("ExactInvert", "Exact invert", model=model, positive=pos, negative=neg, latent=latent,
                 steps=REFERENCE_STEPS, scheduler=REFERENCE_SCHEDULER, cfg=1.0, preset="balanced")
    wf.group("Mask: the right half")
    blank = wf.add("SolidMask", "Mask canvas (0)", value=0.0, width=32, height=32)
    half = wf.add("SolidMask", "Edit region (1)", value=1.0, width=16, height=32)
    mask = wf.add("MaskComposite", "Right half", destination=blank[0], source=half[0], x=16, y=0, operation="add")
    wf.group("Masked edit: replay with the edit prompt inside the mask")
    ed = wf.add("InvertedLatentSampler", "Replay (masked edit)", model=model, positive=edit[0], negative=neg,
                cfg=3.0, inverted_latent=inv[0], mask=mask[0])
    decode_and_save(wf, ed[0], vae, "masked edit", "inversion/reference_masked_edit")
    wf.note = (
        "WHAT TO LOOK AT: the saved image (bottom row): its left half should come back as the input (top left), its "
        "right half edited. The image is inverted with its own prompt ('coffee', Exact Invert, "
        f"{REFERENCE_STEPS} steps) and replayed with a new prompt ('bricks', cfg 3) only inside the mask (the right "
        "half, Solid Mask + Mask Composite; a painted Load Image mask works the same; an all-0 mask edits nothing "
        "and is warned about). Outside the mask every replay step is pinned to the stored trajectory."
        "\n\n" + REFERENCE_SETUP.format(image=image))
    return wf.to_ui()


def reference_sampler_custom_advanced(defs) -> dict:
    image = "01_astronaut.png"
    wf = Workflow(defs, "")
    model, vae, pos, neg, img, latent = reference_base(wf, image, "astronaut")
    sched = wf.add("BasicScheduler", model=model, scheduler=REFERENCE_SCHEDULER, steps=REFERENCE_STEPS, denoise=1.0)
    noise = wf.add("DisableNoise")
    guider = wf.add("CFGGuider", model=model, positive=pos, negative=neg, cfg=1.0)
    wf.group("Invert: SamplerCustomAdvanced + Exact Inversion SAMPLER, flipped sigmas")
    flip = wf.add("FlipSigmas", "FlipSigmas (ascending: inversion)", sigmas=sched[0])
    inv_sampler = wf.add("ExactInvertSampler", "Exact Inversion SAMPLER", preset="balanced")
    inv = wf.add("SamplerCustomAdvanced", "Invert (SamplerCustomAdvanced)", noise=noise[0], guider=guider[0],
                 sampler=inv_sampler[0], sigmas=flip[0], latent_image=latent)
    wf.group("Replay: SamplerCustomAdvanced + Inverted Replay SAMPLER, same sigmas")
    replay_sampler = wf.add("InvertedReplaySampler")
    rec = wf.add("SamplerCustomAdvanced", "Replay (SamplerCustomAdvanced)", noise=noise[0], guider=guider[0],
                 sampler=replay_sampler[0], sigmas=sched[0], latent_image=inv["output"])
    decode_and_save(wf, rec["output"], vae, "replay", "inversion/reference_custom_advanced")
    wf.note = (
        "WHAT TO LOOK AT: the saved replay (bottom row) should come back as the input image (top left). The same "
        "inversion inside the host's SamplerCustomAdvanced: Exact Inversion SAMPLER with the schedule flipped to "
        f"ascending (BasicScheduler {REFERENCE_SCHEDULER}, {REFERENCE_STEPS} steps -> FlipSigmas), DisableNoise and a "
        "CFGGuider at cfg 1 give the inverted noise; a second SamplerCustomAdvanced with the Inverted Replay SAMPLER "
        "on the original (descending) sigmas brings the image back (other sigmas are an error, a latent that is no "
        "inversion's noise a warning). Swap in the DDIM / EasyInv SAMPLER twins, or another guider, the same way."
        "\n\n" + REFERENCE_SETUP.format(image=image))
    return wf.to_ui()


FLOW_MODEL = "sd3-mmdit-flow"
FLOW_SCHEDULER = "simple"
# the exact preset on a schedule whose low levels shrink geometrically: on simple its first step stalls at ~59 dB
# (README, "Exact at the limit"), on exponential it reaches ~90 dB at the same T
FLOW_EXACT_SCHEDULER = "exponential"


def has_flow_reference(defs) -> bool:
    loader = defs.get("InversionReferenceModelLoader")
    if loader is None:
        return False
    spec = loader.INPUT_TYPES().get("required", {}).get("model")
    return bool(spec) and isinstance(spec[0], (list, tuple)) and FLOW_MODEL in spec[0]


def reference_flow_reconstruct(defs) -> dict:
    image = "00_cat.png"
    wf = Workflow(defs, "")
    model, vae, pos, neg, img, latent = reference_base(wf, image, "cat", model=FLOW_MODEL)
    exact = ("Exact exponential", "ExactInvert", {"steps": REFERENCE_STEPS, "scheduler": FLOW_EXACT_SCHEDULER,
                                                   "cfg": 1.0, "denoise": 1.0, "preset": "exact"})
    methods, report = reconstruct_all(wf, model, vae, pos, neg, img, latent, REFERENCE_STEPS, FLOW_SCHEDULER,
                                      "inversion/reference_flow", extra=(exact,))
    names = ", ".join(tag for tag, _n, _w in methods[:-1])
    wf.note = (
        f"WHAT TO LOOK AT: one row per inversion method ({names}) on a rectified-flow model (the bundled SD3 MMDiT "
        f"reference model, '{FLOW_MODEL}' in Load Inversion Reference Model). Each row inverts the image "
        f"({REFERENCE_STEPS} steps, scheduler {FLOW_SCHEDULER}, which starts at the flow model's sigma_max = 1, "
        "cfg 1, prompt 'cat') up to pure noise and replays it: compare each saved image with the input (top left)."
        + (" Each row's Inversion Report shows PSNR/SSIM and the cost." if report else "")
        + f" The last row is Exact Invert's exact preset on the {FLOW_EXACT_SCHEDULER} scheduler: on {FLOW_SCHEDULER} "
        "its first step cannot be solved to the tolerance (a warning says so), on a schedule whose low levels shrink "
        "geometrically it can (about 90 dB instead of 59 on this model)."
        + "\n\n" + REFERENCE_SETUP.format(image=image))
    return wf.to_ui()


def checkpoint_edit(defs, *, ckpt: str, size: int, method: str, method_widgets: dict, source: str, target: str,
                    edit_cfg: float, correction: float, tag: str, note: str) -> dict:
    wf = Workflow(defs, "")
    wf.group(INPUTS_GROUP)
    loader = wf.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    model, clip, vae = loader["MODEL"], loader["CLIP"], loader["VAE"]
    pos = wf.add("CLIPTextEncode", "Source prompt (describe your image)", text=source, clip=clip)
    neg = wf.add("CLIPTextEncode", "Negative prompt (empty)", text="", clip=clip)
    edit = wf.add("CLIPTextEncode", "Edit prompt", text=target, clip=clip)
    img = wf.add("LoadImage", image="example.png")
    scaled = wf.add("ImageScale", "Upscale Image (model size)", image=img[0], upscale_method="lanczos", width=size,
                    height=size, crop="center")
    latent = wf.add("VAEEncode", pixels=scaled[0], vae=vae)
    wf.group(f"Invert ({method_title(method)})")
    inv = wf.add(method, f"{method_title(method)}", model=model, positive=pos[0], negative=neg[0],
                 latent=latent[0], **method_widgets)
    wf.group("Reconstruction: replay with the source prompt")
    rec = wf.add("InvertedLatentSampler", "Replay (source prompt)", model=model, positive=pos[0], negative=neg[0],
                 cfg=1.0, inverted_latent=inv[0])
    decode_and_save(wf, rec[0], vae, "reconstruction", f"inversion/{tag}_reconstruction")
    wf.group("Edit: replay with the edit prompt")
    ed = wf.add("InvertedLatentSampler", "Replay (edit prompt)", model=model, positive=edit[0], negative=neg[0],
                cfg=edit_cfg, inverted_latent=inv[0], correction_strength=correction, source_positive=pos[0])
    decode_and_save(wf, ed[0], vae, "edit", f"inversion/{tag}_edit")
    wf.note = note + "\n\n" + checkpoint_setup(ckpt, size)
    return wf.to_ui()


def method_title(node_type: str) -> str:
    return {"DDIMInvert": "DDIM Invert", "EasyInvInvert": "EasyInv Invert", "ExactInvert": "Exact Invert",
            "GNRIInvert": "GNRI Invert", "PreciseInvInvert": "PreciseInv Invert"}.get(node_type, node_type)


def sd15_easyinv_reconstruct_edit(defs) -> dict:
    return checkpoint_edit(
        defs, ckpt="v1-5-pruned-emaonly.safetensors", size=512, method="EasyInvInvert",
        method_widgets={"steps": 20, "scheduler": "karras", "cfg": 1.0, "preset": "auto"},
        source="a photo of a cat sitting on a sofa", target="a photo of a dog sitting on a sofa", edit_cfg=7.5,
        correction=0.8, tag="sd15",
        note=("Stable Diffusion 1.5: EasyInv inversion (20 steps: with the SD1.x setting EasyInv blends 6 or more "
              "steps from 29 on and then reconstructs worse than plain DDIM, and says so; karras: up to the model's "
              "sigma_max, cfg 1, preset auto = the SD1.x setting), then two replays of the inverted latent: with the source prompt at cfg 1 (reconstruction) "
              "and with an edit prompt at cfg 7.5 with source correction 0.8 (on the pack's reference model more correction made the edit stronger, "
              "not more faithful: try 0 and 1 and look). Write a source prompt that describes your image."))


def sdxl_edit(defs) -> dict:
    return checkpoint_edit(
        defs, ckpt="sd_xl_base_1.0.safetensors", size=1024, method="EasyInvInvert",
        method_widgets={"steps": 50, "scheduler": "karras", "cfg": 1.0, "preset": "auto"},
        source="a photo of a cat sitting on a sofa", target="a photo of a dog sitting on a sofa", edit_cfg=5.0,
        correction=0.8, tag="sdxl",
        note=("SDXL base: EasyInv inversion (50 steps, karras: up to the model's sigma_max, cfg 1; preset auto "
              "picks the SDXL setting, "
              "eta 0.8, window 0.85-0.95), then a reconstruction replay (source prompt, cfg 1) and an edit replay "
              "(edit prompt, cfg 5, source correction 0.8; on the pack's reference model more correction made the edit stronger, not "
              "more faithful: try 0 and 1 and look). Write a source prompt that describes your image."))


def sdxl_turbo_gnri(defs) -> dict:
    gnri = "GNRIInvert" in defs
    method = "GNRIInvert" if gnri else "ExactInvert"
    widgets = {"steps": 4, "scheduler": "sgm_uniform", "cfg": 1.0}
    widgets.update({} if gnri else {"preset": "exact"})
    return checkpoint_edit(
        defs, ckpt="sd_xl_turbo_1.0_fp16.safetensors", size=512, method=method, method_widgets=widgets,
        source="a photo of a cat sitting on a sofa", target="a photo of a dog sitting on a sofa", edit_cfg=1.0,
        correction=0.0, tag="sdxl_turbo",
        note=(f"SDXL Turbo in 4 steps: {method_title(method)} (4 steps, sgm_uniform, cfg 1; few-step models need "
              "an exact per-step solve, plain DDIM inversion drifts badly at 4 steps), then a reconstruction replay "
              "and an edit replay with a new prompt, both at cfg 1 as Turbo is meant to run (source correction 0: at "
              "cfg 1 an exact inversion already replays the source trajectory, so it would add nothing)."
              + ("" if gnri else " (GNRI Invert was not registered when this file was generated; rerun "
                                  "scripts/make_workflows.py to use it.)")
              + " Write a source prompt that describes your image."))


def sd3_flow_exact(defs) -> dict:
    return checkpoint_edit(
        defs, ckpt="sd3_medium_incl_clips.safetensors", size=1024, method="ExactInvert",
        method_widgets={"steps": 28, "scheduler": "simple", "cfg": 1.0, "preset": "balanced"},
        source="a photo of a cat sitting on a sofa", target="a photo of a dog sitting on a sofa", edit_cfg=4.0,
        correction=0.8, tag="sd3",
        note=("SD3 medium (rectified flow): Exact inversion on the flow schedule (28 steps, scheduler simple, cfg "
              "1; the checkpoint's own shift 3.0 applies), then a reconstruction replay (cfg 1) and an edit replay "
              "(cfg 4, source correction 0.8). The incl_clips checkpoint carries CLIP-L/G (no T5), so Load "
              "Checkpoint gives MODEL, CLIP and VAE. Write a source prompt that describes your image."))


WORKFLOWS = {
    "reference_reconstruct_all_methods.json": reference_reconstruct_all_methods,
    "reference_edit.json": reference_edit,
    "reference_masked_edit.json": reference_masked_edit,
    "reference_sampler_custom_advanced.json": reference_sampler_custom_advanced,
    "sd15_easyinv_reconstruct_edit.json": sd15_easyinv_reconstruct_edit,
    "sdxl_edit.json": sdxl_edit,
    "sdxl_turbo_gnri.json": sdxl_turbo_gnri,
    "sd3_flow_exact.json": sd3_flow_exact,
}


def build_all(defs) -> dict:
    """``{file name: UI workflow}`` for the registry ``defs`` (``host.engine().nodes.NODE_CLASS_MAPPINGS``); the
    flow-model workflow only where the reference loader offers the flow model."""
    makers = dict(WORKFLOWS)
    if has_flow_reference(defs):
        makers["reference_flow_reconstruct.json"] = reference_flow_reconstruct
    return {name: make(defs) for name, make in makers.items()}


def render(ui: dict) -> str:
    return json.dumps(ui, indent=2, ensure_ascii=False) + "\n"


def write_or_check(build_all, script: str, argv=None) -> int:
    """The command line of a workflow generator: write every file ``build_all(defs)`` returns, or with --check
    exit 1 when a committed file differs (``script`` names the generator in the message)."""
    ap = argparse.ArgumentParser(description=f"write the workflows of {script} (see its docstring)")
    ap.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    args = ap.parse_args(argv)
    import contextlib
    import io
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import host
    from workflow_format import validate_ui

    with contextlib.redirect_stderr(io.StringIO()):
        defs = host.engine().nodes.NODE_CLASS_MAPPINGS
    stale = []
    for name, ui in build_all(defs).items():
        problems = validate_ui(ui, defs)
        if problems:
            print(f"{name}: generated an invalid workflow:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        path = WORKFLOWS_DIR / name
        text = render(ui)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            WORKFLOWS_DIR.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date (run scripts/{script}): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return write_or_check(build_all, "make_workflows.py", argv)


if __name__ == "__main__":
    sys.exit(main())
