"""What an inversion was guided with, and the checks a replay's guidance must pass: fingerprints of conditionings
(prompts, image inputs such as inpainting latents, hooks, the rows of a batch), the guider's type, cfg and settings.
A replay that keeps the inversion's prompt but changes the rest is neither a reconstruction nor an edit: warned."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

import comfy.samplers

from .host_compat import unsupported_host, warn
from .patch_checks import edit_engine_of
from ..inversion_core.fingerprint import fingerprint, matches


# entries the host's guider adds to each conditioning when it converts a CONDITIONING for sampling
# (comfy.sampler_helpers.convert_cond: a copy of the tensor, model conds built from it, upstream a fresh uuid per call):
# left out, so that the inversion's guider copy and a replay's CONDITIONING of the same prompt fingerprint alike
_CONVERTED_KEYS = ("cross_attn", "model_conds", "uuid")
# entries that change the model, not the prompt: upstream's hooks (a LoRA applied while this conditioning is evaluated).
# Left out of the prompt's fingerprint and compared by check_model_inputs (hooks_state): their objects also carry
# sampling-time state (the current keyframe, sigmas) that differs between runs that mean the same thing
_MODEL_KEYS = ("hooks",)
# prompts that differ differ everywhere; the same prompt encoded again (another text-encode node) may differ in
# float rounding on some devices, which this allows
CONDITIONING_RTOL = 1e-4


def conditioning_fingerprint(cond: Any) -> Any:
    """A fingerprint (inversion_core/fingerprint.py) of a CONDITIONING ``[[tensor, {pooled_output, width, ...}], ...]``
    or of a guider's converted copy of one ``[{cross_attn: tensor, ...}, ...]``: its tensors and every extra entry the
    model is given (pooled output, SDXL's width / height / crop / target size, areas, masks, strengths, other
    tensors; a ControlNet by what it contributes (_control_state); a data object such as unCLIP's / Wan
    image-to-video's CLIP-vision output by its tensors (inversion_core/fingerprint.py), other objects by their type).
    Hooks are not the prompt: hooks_state. None for anything else."""
    items = _cond_items(cond)
    if items is None:
        return None
    return fingerprint([(tensor, {k: _control_state(v) if k == "control" else v
                                  for k, v in extra.items() if k not in _CONVERTED_KEYS + _MODEL_KEYS})
                        for tensor, extra in items])


def _cond_items(cond: Any) -> Optional[list]:
    """(text tensor, extra entries) per item of a CONDITIONING or of a guider's converted copy of one; None for
    anything else."""
    if not isinstance(cond, (list, tuple)) or not cond:
        return None
    items = []
    for c in cond:
        if isinstance(c, dict):
            items.append((c.get("cross_attn"), c))
        elif isinstance(c, (list, tuple)) and len(c) >= 2 and isinstance(c[1], dict):
            items.append((c[0], c[1]))
        else:
            return None
    return items


# conditioning entries that hand the model an image beside the noisy latent, not a prompt: InpaintModelConditioning's
# concat_latent_image / concat_mask (SD1.5 / SDXL inpainting UNets, Flux Fill), InstructPixToPixConditioning's
# concat_latent_image, the x4 upscaler's concat_image, ReferenceLatent's reference_latents (Flux Kontext,
# Qwen-Image-Edit). An edit changes the prompt; these must stay the inversion's
IMAGE_INPUTS = ("concat_latent_image", "concat_mask", "concat_image", "reference_latents")


def image_inputs(cond: Any) -> Optional[dict]:
    """The IMAGE_INPUTS a CONDITIONING (or a guider's converted copy) carries: their names and a fingerprint of
    their values per item; None when it cannot be read."""
    items = _cond_items(cond)
    if items is None:
        return None
    chosen = [{k: extra[k] for k in IMAGE_INPUTS if extra.get(k) is not None} for _, extra in items]
    return {"names": sorted({k for c in chosen for k in c}), "print": [fingerprint(c) for c in chosen]}


def same_entries(old: list, new: list, rtol: float = CONDITIONING_RTOL) -> bool:
    """Whether two per-entry fingerprint lists (image_inputs / hooks_state "print") hold the same states, whatever
    their number and order: the host evaluates each conditioning entry with its own image inputs and hooks, so an
    edit's ConditioningCombine of two prompts with the inversion's inputs gives the model what one entry did (a whole-
    list comparison warned 'none' against 'none' on every combined or scheduled edit prompt)."""
    return (all(any(matches(a, b, rtol=rtol) for b in new) for a in old)
            and all(any(matches(a, b, rtol=rtol) for a in old) for b in new))


def row_prints(cond: Any, batch: Optional[int] = None) -> Optional[list]:
    """Per batch row of a conditioning (or a guider's converted copy): fingerprints of what that row gives the model,
    {"prompt": its text tensor and pooled output, "images": its IMAGE_INPUTS}; a tensor of batch 1 serves every row.
    ``batch``: the rows wanted (the latent's batch); None: the conditioning's own batch, and None when that is 1 (one
    prompt and one set of image inputs for every item: any pairing of items is the inversion's). None when it cannot
    be read or a tensor's batch is neither 1 nor ``batch``."""
    items = _cond_items(cond)
    if items is None:
        return None

    def per_row(extra: dict) -> list:
        return [(k, extra.get(k)) for k in ("pooled_output",) + IMAGE_INPUTS if extra.get(k) is not None]

    sizes = {t.shape[0] for tensor, extra in items
             for t in [tensor] + [v for _, val in per_row(extra) for v in (val if isinstance(val, list) else [val])]
             if isinstance(t, torch.Tensor) and t.ndim > 0}
    rows = batch if batch is not None else max(sizes, default=1)
    if (batch is None and rows == 1) or not sizes <= {1, rows}:
        return None

    def row(v: Any, r: int) -> Any:
        if isinstance(v, list):
            return [row(u, r) for u in v]
        return v[r:r + 1] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows else v

    out = []
    for r in range(rows):
        prompt = [(row(tensor, r), row(extra.get("pooled_output"), r)) for tensor, extra in items]
        images = [{k: row(v, r) for k, v in per_row(extra) if k != "pooled_output"} for _, extra in items]
        out.append({"prompt": fingerprint(prompt), "images": fingerprint(images)})
    return out


def hooks_state(cond: Any) -> Optional[dict]:
    """The hooks a CONDITIONING (or a guider's converted copy) carries per item (upstream: Create Hook LoRA / Create
    Hook Model as LoRA attached by Cond Set Props, Set CLIP Hooks ...; the host writes their weights into the network
    while the item is evaluated): how many, and a fingerprint of what each does (_hook_state); None when it cannot be
    read. Hosts without hooks (the PyPI fork) give every item none."""
    items = _cond_items(cond)
    if items is None:
        return None
    groups = [_hook_group_state(extra.get("hooks")) for _, extra in items]
    return {"count": sum(len(g) for g in groups if isinstance(g, list)), "print": [fingerprint([g]) for g in groups]}


def _hook_group_state(group: Any) -> Any:
    if group is None:
        return None
    hooks = getattr(group, "hooks", None)
    if not isinstance(hooks, (list, tuple)):
        warn(f"conditioning: its hooks ({type(group).__name__}) have no list of hooks (the host HookGroup's hooks), so "
             "a replay with other hooks than the inversion's is not told apart. " + unsupported_host("the hooks check"))
        return f"<{type(group).__name__}>"
    return [_hook_state(hook) for hook in hooks]


def _hook_state(hook: Any) -> dict:
    """What a hook does to the model, as plain values for the fingerprint: its kind, the strength its node set, its
    keyframes (strength from a start percent on) and the weights it applies (a hook LoRA's tensors; a model-as-LoRA
    hook's patches). Not its identity (a second Create Hook LoRA of the same file is the same hook) nor the state the
    host keeps while sampling (current keyframe, its sigma)."""
    keyframes = getattr(getattr(hook, "hook_keyframe", None), "keyframes", None)
    return {"type": type(hook).__name__,
            # the node's strength_model (the public strength_model is multiplied by the current keyframe's)
            "strength": getattr(hook, "_strength_model", None),
            "keyframes": [(getattr(k, "strength", None), getattr(k, "start_percent", None),
                           getattr(k, "guarantee_steps", None)) for k in keyframes or ()],
            "weights": getattr(hook, "weights", None)}


def scheduled_hooks(guider) -> Optional[str]:
    """A note when a conditioning the inversion's ``guider`` evaluates carries hooks whose keyframes change their
    strength during sampling (Set Hook Keyframes): the host moves a hook to its next keyframe as sigma falls and never
    back, while an inversion walks sigma up, so the inversion and its replay run the hooked model at other strengths
    (tiny SD1.5 on upstream, strength 1 then 0 from 50%, Exact's exact preset: 20.5 dB instead of 81.9 with the same
    hook unscheduled)."""
    conds, cfg = guider_conds(guider), guider_cfg(guider)
    # the host evaluates the negative only at a cfg other than 1; a guider with its own prediction: all of them
    used = conds.values() if cfg is None else (conds.get("positive"),) + ((conds.get("negative"),) if cfg != 1.0
                                                                          else ())
    for cond in used:
        for _, extra in _cond_items(cond) or ():
            for hook in getattr(extra.get("hooks"), "hooks", None) or ():
                keyframes = getattr(getattr(hook, "hook_keyframe", None), "keyframes", None) or ()
                if len({getattr(k, "strength", None) for k in keyframes}) > 1:
                    return ("a conditioning carries hooks whose keyframes change their strength during sampling (Set "
                            "Hook Keyframes); the host steps through keyframes as sigma falls, an inversion walks "
                            "sigma up, so the inversion runs the hooks at other strengths than its replay and the "
                            "image does not come back (tiny SD1.5: 20.5 dB instead of 81.9). Invert and replay with "
                            "hooks of one strength")
    return None


def replay_conditionings(positive: Any, negative: Any, cfg: Optional[float], source_positive: Any = None) -> dict:
    """check_model_inputs' conditionings of a replay: the positive; the negative where the host evaluates it (cfg not
    1; unknown for a guider with its own prediction: left out); source correction's source_positive."""
    conds = {"positive": (positive, "positive")}
    if cfg is not None and cfg != 1.0:
        conds["negative"] = (negative, "negative")
    if source_positive is not None:
        conds["source_positive"] = (source_positive, "positive")
    return conds


def check_model_inputs(guidance: Optional[dict], conds: dict, action: str, who: str = "",
                       by_row: frozenset = frozenset()) -> None:
    """A warning for each replay conditioning (``conds``: input name -> (CONDITIONING, "positive" / "negative": the
    inversion's conditioning it is compared with)) that gives the model other inputs than the inversion's beside its
    prompt, which no prompt check says (another conditioning reads as an edit):

    * image inputs (IMAGE_INPUTS): the model sees another image beside the latent than it was inverted with (tiny
      SD1.5-inpainting, an InpaintModelConditioning inversion replayed with the plain prompt: 7.7 dB instead of 45);
    * hooks (hooks_state): the model runs with other weights while this conditioning is evaluated (another hook LoRA,
      its strength or keyframes, or a hook on one branch only).

    ``by_row``: the roles whose image inputs were compared row by row (check_item_pairing)."""
    recorded = {role: v for role, v in ((guidance or {}).get("image_inputs") or {}).items() if role not in by_row}
    recorded_hooks = (guidance or {}).get("hooks") or {}
    for name, (cond, role) in conds.items():
        old = recorded.get(role)
        now = image_inputs(cond) if old is not None and cond is not None else None
        if now is not None and not same_entries(old["print"], now["print"]):
            had, has = ", ".join(old["names"]) or "none", ", ".join(now["names"]) or "none"
            what = f"other values of {has} (another image or mask)" if had == has else f"{has}, where it had {had}"
            warn(f"{who}{name}: the images it gives the model beside the latent are not those of the {role} "
                 f"conditioning this latent was inverted with: {what}. The model then sees another input than at "
                 f"inversion, so the {action} does not reconstruct the image and an edit changes more than its prompt "
                 "(tiny SD1.5-inpainting: 7.7 dB instead of 45). Give every conditioning of the replay, an edit prompt "
                 "too, the inversion's image inputs: the same InpaintModelConditioning / ReferenceLatent with the "
                 "same image and mask")
        old = recorded_hooks.get(role)
        now = hooks_state(cond) if old is not None and cond is not None else None
        if now is None or None in old["print"] or None in now["print"] or same_entries(old["print"], now["print"],
                                                                                       rtol=1e-6):
            continue
        had, has = old["count"], now["count"]
        what = ("other hooks (another LoRA, strength or keyframes)" if had and has else
                f"{has or 'none'}, where it had {had or 'none'}")
        warn(f"{who}{name}: its hooks are not those of the {role} conditioning this latent was inverted with: {what}. "
             "Hooks (Create Hook LoRA ... attached by Cond Set Props, Set CLIP Hooks) change the model's weights "
             f"while this conditioning is evaluated, so the {action} runs another model than the inversion's and does "
             f"not reconstruct the image, and an edit changes more than its prompt (tiny SD1.5 on upstream ComfyUI, "
             "cfg 2: another hook LoRA, the same at half strength, none: 17.0 / 21.6 / 18.3 dB instead of 40.4). Give "
             "every conditioning of the replay, an edit prompt too, the inversion's hooks")


def check_item_pairing(found: "_Found", positive: Any, who: str, negative: Any = None) -> frozenset:
    """Warnings for batch items the guider pairs with another inverted item's prompt or image inputs. The host pairs
    a latent's item i with row i of the conditioning; after LatentBatch / RepeatLatentBatch of picked items of an
    inversion made with one prompt per item, item i may be row j ≠ i of its inversion, and was replayed with another
    image's prompt without a word (tiny SD1, BDIA: 0.69 RMS off the image instead of 0). ``negative``: the replay's
    negative where the host evaluates it (its image inputs are compared per row too). Returns the roles ("positive",
    "negative") whose image inputs were compared row by row here (the whole-batch comparison of check_model_inputs,
    which would take a picked item's own image inputs for other ones, is skipped for them); empty when the items are
    their inversion's batch in order, or rows cannot be told."""
    pairs = found.items
    n = len(pairs)
    if not n or (found.batch == n and all(g is pairs[0][0] and j == i for i, (g, j) in enumerate(pairs))):
        return frozenset()
    done = set()
    for role, cond in (("positive", positive), ("negative", negative)):
        key = "rows" if role == "positive" else "negative_rows"
        if cond is None or not all((g or {}).get(key) for g, _ in pairs):
            continue                 # an inversion with one conditioning for all its items: compared as a whole
        now = row_prints(cond, n)
        if now is None or any(j >= len(g[key]) for g, j in pairs):
            continue
        prompts, images = [], []
        for i, (guidance, j) in enumerate(pairs):
            rows = guidance[key]
            if role == "positive" and not matches(now[i]["prompt"], rows[j]["prompt"], rtol=CONDITIONING_RTOL):
                other = [r for r, row in enumerate(rows)
                         if matches(now[i]["prompt"], row["prompt"], rtol=CONDITIONING_RTOL)]
                if other:            # another inverted item's prompt; a prompt of none of them is an edit
                    prompts.append(f"item {i} (inverted as item {j}) gets the prompt of item {other[0]}")
            if not matches(now[i]["images"], rows[j]["images"], rtol=CONDITIONING_RTOL):
                images.append(f"item {i} (inverted as item {j})")
        if prompts:
            warn(f"{who}latent_image: {'; '.join(prompts)} of its inversion. The host pairs a latent's items with the "
                 "prompt's rows in order, and these items are not in their inversion's order (LatentBatch / "
                 "RepeatLatentBatch of picked items), so they are replayed with other images' prompts and do not "
                 "come back (tiny SD1, BDIA: 0.69 RMS off the image instead of 0). Give the guider the items' own "
                 "prompts in the latent's order, or replay the inversion's LATENT as it came")
        if images:
            warn(f"{who}{role}: the images it gives the model beside the latent for {', '.join(images)} are not "
                 "those that item was inverted with (InpaintModelConditioning / ReferenceLatent of another image or "
                 "mask, or in another order), so the replay does not reconstruct it. Give each item the image inputs "
                 "it was inverted with, in the latent's order")
        done.add(role)
    return frozenset(done)


def _control_state(control: Any, depth: int = 0) -> Any:
    """What a ControlNet / T2I adapter in a conditioning contributes, as plain values for the fingerprint: its hint
    image, strength and step range, a few of its model's weights, and the chain before it (an object alone would be
    compared by type only: another hint image at the same strength would pass for the inversion's conditioning)."""
    if control is None or depth > 8:
        return control
    if not hasattr(control, "cond_hint_original"):
        warn(f"conditioning: its ControlNet ({type(control).__name__}) has no cond_hint_original (the host "
             "ControlBase's hint image), so a replay with another hint image than the inversion's is not told apart. "
             + unsupported_host("the ControlNet check"))
        return control
    net = getattr(control, "control_model", None)
    params = list(net.parameters()) if isinstance(net, torch.nn.Module) else []
    return {"type": type(control).__name__, "hint": control.cond_hint_original,
            "strength": getattr(control, "strength", None),
            "range": tuple(getattr(control, "timestep_percent_range", ()) or ()),
            "weights": [params[0], params[-1]] if params else None,
            "previous": _control_state(getattr(control, "previous_controlnet", None), depth + 1)}


def guidance_of(guider) -> dict:
    """What an inversion was guided with, for its replays to compare theirs with: the fingerprint of the guider's
    positive conditioning, its cfg, the image inputs and hooks of the conditionings the model was evaluated with
    (check_model_inputs) and whether the positive equals the negative. The cfg is None for a guider that overrides the
    host's CFG prediction (PerpNegGuider, DualCFGGuider, BasicGuider ...): its ``cfg`` attribute need not be the scale
    it applies."""
    conds = guider_conds(guider)
    cfg = guider_cfg(guider)
    # the negative's image inputs and hooks count only where the host evaluates it (it skips it at cfg 1)
    used = ("positive",) + (("negative",) if cfg is not None and cfg != 1.0 else ())
    inputs = {role: image_inputs(conds.get(role)) for role in used}
    hooks = {role: hooks_state(conds.get(role)) for role in used}
    same = _same_conditioning(conds.get("positive"), conds.get("negative"))
    if cfg is not None and same:
        cfg = None        # positive = negative: every cfg gave the conditional prediction, none is "the" cfg
    # positive_is_negative: an unconditional inversion (the empty prompt on both, as the shipped graphs' separate empty
    # CLIPTextEncode gives it), whose trajectory no prompt describes: the edit engine's source branch then takes the
    # image's description unwarned (edit.py _check_source_prompt)
    # the negative steers every step where it is evaluated (cfg != 1): a replay with another one does not come back
    negative = conditioning_fingerprint(conds.get("negative")) if "negative" in used and not same else None
    return {"positive": conditioning_fingerprint(conds.get("positive")), "negative": negative, "cfg": cfg,
            "image_inputs": inputs,
            "hooks": hooks, "positive_is_negative": same, "rows": row_prints(conds.get("positive")),
            "negative_rows": row_prints(conds.get("negative")),
            "guider": guider_state(guider)}


def guider_state(guider) -> dict:
    """What a guider does beside the prompts, for a guider that is not the host's CFGGuider (DualCFGGuider,
    PerpNegGuider, a custom node's): its type, its numeric settings (cfg1 / cfg2, neg_scale ...) and fingerprints of
    its conditionings other than positive / negative (PerpNeg's empty prompt, DualCFG's middle). The cfg check reads
    only CFGGuider's cfg, so another scale on these passed unwarned (tiny SD1, BDIA: DualCFG 3 / 2 replayed at 5 / 1:
    3.15 RMS off the image; PerpNeg cfg 3 at 6: 4.24)."""
    conds = guider_conds(guider)
    standard = getattr(type(guider), "predict_noise", None) is comfy.samplers.CFGGuider.predict_noise
    return {"type": type(guider).__qualname__, "standard": standard,
            "settings": {k: float(v) for k, v in sorted((getattr(guider, "__dict__", None) or {}).items())
                         if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("_")},
            "conds": {k: conditioning_fingerprint(v) for k, v in sorted(conds.items())
                      if k not in ("positive", "negative")}}


def check_replay_guider(guidance: Optional[dict], guider, positive: Any, negative: Any, name: str,
                        model=None) -> None:
    """A warning when the replay's positive is the inversion's own but its guider is of another type than the
    inversion's, or the same type with other settings or other extra conditionings: as check_replay_cfg for cfg,
    neither a reconstruction nor an edit of the prompt. Two guiders that predict with the host's CFG (CFGGuider,
    BasicGuider: cfg 1) are check_replay_cfg's."""
    old = (guidance or {}).get("guider")
    if not old or guider is None:
        return
    now = guider_state(guider)
    if old.get("standard") and now["standard"]:
        return
    differs = []
    if old["type"] != now["type"]:
        differs.append(f"it is a {now['type']} where the inversion ran a {old['type']} (unless the two give the same "
                       "prediction with these settings)")
    else:
        # either side's settings: one the replay's guider has and the inversion's lacked (set at run time by a
        # custom guider) is a difference too
        moved = [f"{k} {now['settings'].get(k)} (inversion: {old['settings'].get(k)})"
                 for k in sorted(set(old["settings"]) | set(now["settings"]))
                 if now["settings"].get(k) != old["settings"].get(k)]
        if moved:
            differs.append("its " + ", ".join(moved))
        extra = [k for k in set(old["conds"]) | set(now["conds"])
                 if not (k in old["conds"] and k in now["conds"]
                         and matches(old["conds"][k], now["conds"][k], rtol=CONDITIONING_RTOL))]
        if extra:
            differs.append(f"its {', '.join(sorted(extra))} conditioning differs")
    if not differs or (model is not None and edit_engine_of(model) is not None):
        return
    if _same_conditioning(positive, negative) or not is_inversion_prompt(guidance, positive):
        return
    warn(f"{name}: the positive conditioning is the one this latent was inverted with, but the guider is not the "
         f"inversion's: {'; '.join(differs)}. This is neither a reconstruction (that needs the inversion's guider and "
         "settings) nor an edit of the prompt. Replay with the guider the latent was inverted with; to edit, change "
         "the prompt")


def guider_conds(guider, who: Optional[str] = None) -> dict:
    """The guider's conditionings as the host converted them (CFGGuider.original_conds: positive, negative, or
    whatever a custom guider names them). {} for a guider without them, which ``who`` (the first reader in a run)
    warns: every check that compares the guider's conditioning with the inversion's would be skipped unsaid."""
    conds = getattr(guider, "original_conds", None)
    if isinstance(conds, dict):
        return conds
    if who is not None:
        warn(f"{who}: the guider ({type(guider).__name__}) has no original_conds (the host CFGGuider's converted "
             "conditionings), so the checks of its prompts against the inversion's (batch pairing, cfg, image inputs) "
             f"are skipped. {unsupported_host('these checks')}")
    return {}


def guider_patcher(guider):
    """The guider's ModelPatcher (CFGGuider.model_patcher), or None with a warning: the model checks need it."""
    patcher = getattr(guider, "model_patcher", None)
    if patcher is None:
        warn(f"model: the guider ({type(guider).__name__}) has no model_patcher (the host CFGGuider's ModelPatcher), "
             "so the inversion's and the replay's model patches and checkpoints are not compared. "
             + unsupported_host("these checks"))
    return patcher


def guider_cfg(guider) -> Optional[float]:
    """The cfg of a guider that predicts with the host's own CFG (CFGGuider.predict_noise), else None."""
    standard = getattr(type(guider), "predict_noise", None) is comfy.samplers.CFGGuider.predict_noise
    cfg = getattr(guider, "cfg", None) if standard else None
    if standard and not isinstance(cfg, (int, float)):
        warn(f"cfg: the host's CFGGuider has no numeric cfg attribute (got {type(cfg).__name__}), so the replay's cfg "
             f"is not compared with the inversion's. {unsupported_host('the cfg check')}")
    return float(cfg) if isinstance(cfg, (int, float)) else None


def is_inversion_prompt(guidance: Optional[dict], cond: Any) -> Optional[bool]:
    """Whether ``cond`` is the positive conditioning the inversion recorded (``guidance``, from guidance_of); None when
    either is unknown (a record made before this was recorded, a conditioning that could not be read)."""
    old = (guidance or {}).get("positive")
    now = conditioning_fingerprint(cond) if old is not None else None
    if now is None:
        return None
    return matches(old, now, rtol=CONDITIONING_RTOL)


def check_source_positive(guidance: Optional[dict], source_positive: Any, positive: Any) -> None:
    """A warning when source correction's ``source_positive`` is not the inversion's positive while the replay's
    ``positive`` is: the offsets then make the replay follow another prompt's predictions, and the image does not come
    back (tiny SDXL, the same text at another size, cfg 5: 26 dB instead of 119; tiny SD2.1 unCLIP, the conditioning
    of another image, cfg 3: 44 dB instead of 145). Other uses are meant and exact: a source_positive that is also the
    positive reconstructs whatever the inversion's prompt, and a description as source with an edit prompt after an
    empty-prompt inversion is a DirectInversion-style edit. A plain replay with another image's conditioning is a
    variation, an edit like another prompt: not warned."""
    if is_inversion_prompt(guidance, positive) and is_inversion_prompt(guidance, source_positive) is False:
        warn("source_positive: it differs from the positive conditioning this latent was inverted with (another "
             "prompt or image: unCLIP's CLIP-vision output; or the same text with other values: SDXL's size / crop, "
             "the pooled output ...), while positive is that conditioning: source correction then pulls the replay "
             "towards source_positive's predictions and the image does not come back. Connect the conditioning the "
             "inversion node got as positive to source_positive too")


def _same_conditioning(a: Any, b: Any) -> bool:
    fa, fb = conditioning_fingerprint(a), conditioning_fingerprint(b)
    return fa is not None and fb is not None and matches(fa, fb, rtol=CONDITIONING_RTOL)


def _own_rows(pairs: tuple, key: str, cond: Any) -> Optional[list]:
    """Per replayed item i (``pairs``: its inversion's guidance and row there), whether row i of ``cond`` is the row
    ``key`` ("rows" / "negative_rows") that item was inverted with; None when the rows cannot be read."""
    now = row_prints(cond, len(pairs))
    if now is None or any(j >= len((g or {}).get(key) or ()) for g, j in pairs):
        return None
    return [matches(now[i]["prompt"], g[key][j]["prompt"], rtol=CONDITIONING_RTOL) for i, (g, j) in enumerate(pairs)]


def check_replay_cfg(guidance: Optional[dict], positive: Any, negative: Any, cfg: float, name: str,
                     model=None, items: tuple = ()) -> None:
    """A warning when the replay's ``positive`` is the inversion's own but its cfg is not the inversion's: the result
    is then neither the image back nor an edit of the prompt, only the same prompt pushed harder or softer. The caller
    leaves out replays that source correction at strength 1 on every step makes exact at any cfg. Not warned: a
    negative equal to the positive (cfg then changes nothing: the conditional prediction either way), and a MODEL
    carrying the Inversion Edit Engine (it edits with the same prompt: P2P re-weighting, injected features).
    At the inversion's cfg (!= 1), a negative other than the inversion's is warned the same way: it steers every step
    (it was never compared: reference model, cfg 3, 'gravel' replayed with '': 20.5 dB against 76.5, silent).
    An inversion with one prompt (or negative) per item is compared row by row: ``items`` pairs each replayed item with
    its inversion's guidance and row there (LatentFromBatch, LatentBatch of picked items); empty: the inversion's batch
    in order. (Compared as a whole, a picked item's own row never equalled the batch's prompt, and another cfg or
    another negative passed silently: tiny SD1, BDIA, cfg 3 replayed at 5: 1.73 RMS off instead of 0.)"""
    old = (guidance or {}).get("cfg")
    if old is None:
        return
    if (model is not None and edit_engine_of(model) is not None) or _same_conditioning(positive, negative):
        return
    if guidance.get("rows"):
        pairs = items or tuple((guidance, i) for i in range(len(guidance["rows"])))
        own = _own_rows(pairs, "rows", positive)
        if not own or not all(own):      # another item's prompt is check_item_pairing's; a new prompt is an edit
            return
    elif not is_inversion_prompt(guidance, positive):
        return
    if not math.isclose(float(cfg), float(old), rel_tol=1e-6, abs_tol=1e-6):
        warn(f"{name}: the positive conditioning is the one this latent was inverted with, but cfg is {float(cfg):g} "
             f"where the inversion ran at cfg {float(old):g}: this is neither a reconstruction (that needs the "
             f"inversion's cfg {float(old):g}, or source correction at strength 1 on every step) nor an edit of the "
             f"prompt. Set cfg to {float(old):g} to get the image back; to edit, change the prompt")
        return
    if guidance.get("negative_rows"):
        pairs = items or tuple((guidance, i) for i in range(len(guidance["negative_rows"])))
        own = _own_rows(pairs, "negative_rows", negative)
        off = [f"item {i}" + (f" (inverted as item {j})" if j != i else "")
               for i, ((g, j), same) in enumerate(zip(pairs, own or ())) if not same]
        one = len(off) == 1
        what = (f"{', '.join(off)} {'gets' if one else 'get'} another negative than {'it was' if one else 'they were'} "
                "inverted with") if off else None
    else:
        recorded = guidance.get("negative")        # None: the inversion never evaluated its negative
        now = conditioning_fingerprint(negative) if recorded is not None else None
        what = ("the negative conditioning is not the inversion's"
                if now is not None and not matches(recorded, now, rtol=CONDITIONING_RTOL) else None)
    if what:
        where = name[:-len("cfg")] + "negative" if name.endswith("cfg") else name     # the input it is about
        warn(f"{where}: the positive conditioning and cfg {float(cfg):g} are the ones this latent was inverted with, "
             f"but {what}. At cfg != 1 the negative steers every step, so this is neither a reconstruction nor an edit "
             "of the prompt (reference model, cfg 3, negative 'gravel' replayed with '': 20.5 dB against 76.5). "
             "Connect the negative the latent was inverted with (one row per item, in the latent's order) to get the "
             "image back; to edit, change the positive")


def check_guider_conditioning(guider, batch: int, who: str) -> None:
    """check_conditioning for the SAMPLER twins, which see the guider's converted conditionings (``original_conds``:
    positive, negative, or whatever a custom guider names them) instead of CONDITIONING inputs. The host pairs a latent
    of ``batch`` items with the first ``batch`` rows of a larger prompt batch without a word: after LatentFromBatch
    picked item 1 of an inversion with one prompt per item, the item was replayed with item 0's prompt (tiny SD1,
    BDIA: 0.11 relative error instead of 0). The same for the images beside the latent (InpaintModelConditioning of
    a batch: a picked item got item 0's image, 2.2 RMS off instead of 0)."""
    for name, conds in guider_conds(guider, who[0].upper() + who[1:]).items():
        for c in conds if isinstance(conds, (list, tuple)) else ():
            for key in ("cross_attn", "pooled_output") + IMAGE_INPUTS[:3]:
                t = c.get(key) if isinstance(c, dict) else None
                if isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] not in (1, batch):
                    what = "prompts" if key in ("cross_attn", "pooled_output") else f"images ({key})"
                    raise ValueError(
                        f"{name}: the guider's conditioning batch is {t.shape[0]} but {who} got a latent batch of "
                        f"{batch}: the host would pair the latent's items with the first {batch} {what}, whichever "
                        "items they are (after LatentFromBatch: not the picked items' own). Use one prompt (and one "
                        "set of image inputs) for all images or one per image (for a picked item, its own)")
