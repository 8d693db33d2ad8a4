"""Bridge between ComfyUI objects and the pure-torch core.

Every method runs as a host *Sampler* inside the host's own CFGGuider, so the guider does what it does for any
sampler — loads the model, applies LoRA / ControlNet / model patches and model_sampling overrides, prepares the
conditioning, applies CFG — and our sampler only sees a denoiser D(x, σ). The same Sampler objects can be handed to
users for SamplerCustomAdvanced chains.

The guider converts latents with the model's latent format (``process_latent_in`` / ``process_latent_out``); our
samplers work in the model's sigma space in between and never call the host's ``noise_scaling`` /
``inverse_noise_scaling`` (the latter divides by 1 − σ for flow models, infinite at σ = 1).
"""
from __future__ import annotations

import collections
import contextlib
import dis
import functools
import inspect
import logging
import math
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch

import comfy.latent_formats
import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.utils

from .common import AUTO_SCHEDULER, scheduler_for
from .page import show_in_ui
from ..inversion_core import (LATENT_KEY, Denoiser, InversionRecord, MissingInversionRecord, as_sampling_schedule,
                              invert, read_latent_entry, replay)
from ..inversion_core.edit.select import FAMILY_LAYERS
from ..inversion_core.fingerprint import fingerprint, matches
from ..inversion_core.record import describe_change, noise_scale_message, reach_message, relative_difference
from ..inversion_core.replay import source_offsets, step_weights
from ..inversion_core.solvers.bdia import METHOD as BDIA, bdia_replay, bdia_source_offsets
from ..inversion_core.invert import StepHook, StepSolver

# most specific first (V_PREDICTION subclasses EPS). COSMOS_RFLOW (Cosmos Predict2, upstream only) is a rectified
# flow fed through EDM's sigma space: its noise_scaling is x = x0 + σε, as EPS / V / EDM
MODEL_KINDS = ("CONST", "COSMOS_RFLOW", "EDM", "V_PREDICTION", "EPS")
INVERSION_NODES = "DDIM / EasyInv / Exact / GNRI / PreciseInv / BDIA Invert"

log = logging.getLogger("comfyui-inversion")


def warn(message: str) -> None:
    """A warning the user sees in the ComfyUI console and, as a toast naming the node, on the page (page.py; the
    host shows node errors in the UI itself, warnings only in its log)."""
    log.warning("[comfyui-inversion] %s", message)
    show_in_ui(message)


TESTED_HOSTS = "ComfyUI 0.3.64 and the PyPI fork comfyui 0.0.1"


def unsupported_host(what: str) -> str:
    """The sentence every error or warning about a missing or changed host internal ends with."""
    return (f"This ComfyUI version is not supported for {what} (tested on {TESTED_HOSTS}); please report it with "
            "your ComfyUI version")


def model_kind(model_sampling) -> str:
    """EPS / V_PREDICTION / EDM / COSMOS_RFLOW / CONST for the host's model_sampling object (its class is built
    dynamically)."""
    ms = model_sampling
    for name in MODEL_KINDS:
        # getattr: COSMOS_RFLOW is upstream's only (the PyPI fork has none)
        cls = getattr(comfy.model_sampling, name, None)
        if cls is not None and isinstance(ms, cls):
            return name
    # a kind the pack does not know (or a host that renamed one: CONST gone would make a flow model this) is not
    # sampled wrongly (the host's own denoiser is used) but "auto" picks karras and the flow checks do not apply
    absent = [name for name in MODEL_KINDS if name != "COSMOS_RFLOW" and not hasattr(comfy.model_sampling, name)]
    warn(f"model: it samples as {'/'.join(c.__name__ for c in type(ms).__bases__)}, none "
         f"of the kinds the pack knows ({', '.join(MODEL_KINDS)} of comfy.model_sampling"
         + (f"; this ComfyUI has no {', '.join(absent)}" if absent else "") + "): the 'auto' scheduler takes karras, "
         "GNRI / PreciseInv refuse it, and a flow model's checks (sigmas above 1) and noise figures do not apply. "
         + unsupported_host("this model's sampling"))
    return type(ms).__name__


_SAMPLING_METHODS = ("calculate_input", "calculate_denoised", "noise_scaling", "inverse_noise_scaling", "timestep",
                     "sigma", "percent_to_sigma", "set_sigmas", "set_parameters")


def sampling_signature(ms, schedule: torch.Tensor) -> dict:
    """What the network is fed at each level of ``schedule``: the host's model-sampling classes (prediction type:
    EPS / X0 / V_PREDICTION / CONST …, and sigma table: discrete / distilled (LCM) / flow …) and the timestep each
    level maps to. ``model_kind`` alone cannot tell X0 or LCM sampling from EPS (the host subclasses EPS for them)."""
    # the classes that define how the model samples (the host's own, or a node's: the fork's X0 / LCM live in its
    # ModelSamplingDiscrete node's module); the dynamic leaf class the host builds from them defines none
    classes = [c.__name__ for c in type(ms).__mro__
               if any(m in vars(c) for m in _SAMPLING_METHODS) and not issubclass(torch.nn.Module, c)]
    levels = [float(v) for v in schedule.tolist() if float(v) > 0.0]
    with torch.no_grad():
        steps = [float(ms.timestep(torch.tensor(v, dtype=torch.float32))) for v in levels]
    return {"classes": classes, "timesteps": steps, "sigma_max": float(ms.sigma_max)}


def check_sampling(ms, schedule: torch.Tensor, signature: Optional[dict], name: str, action: str) -> None:
    """An error when the model's sampling classes differ from those ``signature`` (sampling_signature at inversion
    time) records; a warning when only its σ_max, or else the timesteps it feeds the network at the schedule's
    levels, differ (a zsnr / sigma-table patch: the user may mean it)."""
    if not signature:
        return
    now = sampling_signature(ms, schedule)
    if now["classes"] != signature.get("classes"):
        raise ValueError(
            f"{name}: this latent was inverted with model sampling {'/'.join(signature.get('classes') or ['?'])} but "
            f"this model samples with {'/'.join(now['classes'])} (a ModelSamplingDiscrete x0 / lcm / v_prediction "
            f"patch, or another model): the network's output means something else there, so the {action} would "
            "not start from the inversion. Use the model (and model_sampling patch) it was inverted with")
    inverted_max = signature.get("sigma_max")
    if inverted_max and not math.isclose(now["sigma_max"], float(inverted_max), rel_tol=1e-3):
        warn(f"{name}: its noise schedule tops out at sigma {now['sigma_max']:.4g}, the model this latent was "
             f"inverted with at {float(inverted_max):.4g} (a different model or model_sampling patch); the stored "
             f"schedule then means other noise levels and the {action} will not reconstruct the image")
        return
    old, new = signature.get("timesteps") or [], now["timesteps"]
    differ = [i for i, (a, b) in enumerate(zip(new, old)) if abs(a - b) > 1e-3 + 1e-4 * abs(b)]
    if len(old) == len(new) and differ:
        i = differ[0]
        warn(f"{name}: this model maps the schedule's sigmas to other timesteps than the model this latent was "
             f"inverted with ({new[i]:.4g} vs {old[i]:.4g} at level {i}; a zsnr / sigma-table patch, "
             "ModelSamplingAuraFlow's timestep scale on another flow model, or another model), so the network sees "
             f"other noise levels and the {action} will not reconstruct the image")


PATCH_KINDS = {"weights": "weight patches (a LoRA, a model merge)",
               "weight_values": "the contents of its weight patches (another LoRA file or merged model on the same "
                                "keys at the same strength)",
               "cfg": "cfg functions (RescaleCFG, PerpNeg, PAG, SAG, APG, SkipLayerGuidance ...)",
               "blocks": "block / attention patches (FreeU, HyperTile, IP-Adapter ...)",
               "wrapper": "a model function wrapper",
               "extensions": "wrappers / callbacks / an attention override (EasyCache, LazyCache, context windows, "
                             "custom nodes ...)",
               "objects": "object patches",
               "settings": "the settings of its patches (the same patch nodes with other values: a PAG / SAG / "
                           "RescaleCFG scale, a FreeU or Deep Shrink factor ...)"}


def edit_engine_of(model):
    """The Inversion Edit Engine a ModelPatcher carries as its model function wrapper, else None."""
    wrapper = (getattr(model, "model_options", None) or {}).get("model_function_wrapper")
    return wrapper if getattr(wrapper, "is_inversion_edit_engine", False) else None


def patch_signature(model) -> dict:
    """What other nodes patched on a ModelPatcher, by kind (names, counts and strengths; no tensors): what changes the
    network's output without changing its model sampling. Empty for a model carrying the edit engine, which checks
    its own inputs (and check_patches what was added after it)."""
    return {} if edit_engine_of(model) is not None else raw_patch_signature(model)


def raw_patch_signature(model) -> dict:
    """patch_signature, the edit engine's own patches included. A ModelPatcher without the attributes the host keeps
    patches in is warned: its patches could not be compared."""
    missing = [name for name in ("model_options", "patches", "object_patches")
               if not isinstance(getattr(model, name, None), dict)]
    if missing and model is not None:
        warn(f"model: this ComfyUI's ModelPatcher ({type(model).__name__}) has no {' / '.join(missing)} dict (where "
             "the host keeps model options, weight patches such as a LoRA, and object patches), so patches that "
             "differ between the inversion and the replay model are not detected. "
             + unsupported_host("the patch check"))
    opts = getattr(model, "model_options", None) or {}
    to = opts.get("transformer_options") or {}
    weights = getattr(model, "patches", None) or {}
    return {
        "weights": hash(tuple(sorted((k, tuple(float(p[0]) if isinstance(p[0], (int, float)) else 0.0 for p in v))
                                     for k, v in weights.items()))),
        # keys and strengths cannot tell two LoRA files of one rank (or two merged models) apart; a sample of their
        # values can (inversion_core/fingerprint.py: a few hundred values per tensor, not a pass over the weights)
        "weight_values": fingerprint(weights),
        "cfg": [k + ":" + str(len(opts[k]) if isinstance(opts[k], list) else 1) for k in BATCH_HOOKS if opts.get(k)],
        "blocks": sorted([f"{k}:{len(v)}" for k, v in (to.get("patches") or {}).items()]
                         + [f"{k}:{sorted(map(str, v))}" for k, v in (to.get("patches_replace") or {}).items()]),
        "wrapper": "model_function_wrapper" in opts,
        "extensions": _extensions(model, opts, to),
        "objects": sorted(k for k in (getattr(model, "object_patches", None) or {}) if k != "model_sampling"),
        "settings": _patch_settings_of(opts, to),
    }


def _patch_settings_of(opts: dict, to: dict) -> str:
    """The values the cfg functions and block / attention patches were made with (_made_with), in order: the kinds
    above name and count them, and the same patch node with another scale passed for the inversion's (tiny SD1, BDIA:
    PAG 3 -> 0.5 26.7 dB, SAG 0.5 -> 2 17.5 dB, Deep Shrink 2 -> 3 21.8 dB, RescaleCFG 0.7 -> 0 42.7 dB, unwarned)."""
    found = []
    for key in BATCH_HOOKS:
        fns = opts.get(key)
        found += [((key,), fn) for fn in (fns if isinstance(fns, (list, tuple)) else
                                          ([fns] if fns is not None else []))]
    for key, fns in sorted((to.get("patches") or {}).items()):
        found += [((key,), fn) for fn in (fns if isinstance(fns, (list, tuple)) else ())]
    for key, fns in sorted((to.get("patches_replace") or {}).items()):
        found += [((key, str(where)), fn)
                  for where, fn in sorted((fns if isinstance(fns, dict) else {}).items(), key=lambda kv: str(kv[0]))]
    state = _state_cells([fn for _, fn in found])
    return repr([where + (_made_with(fn, state=state),) for where, fn in found])


def _state_cells(fns: list) -> frozenset:
    """ids of the closure cells that any of these patch functions (or the functions they close over) assigns: what
    the patches keep between calls. ToMe's two patches share a cell that only one of them assigns; APG's prev_sigma."""
    seen, state, todo = set(), set(), list(fns)
    while todo:
        fn = todo.pop()
        fn = fn.func if isinstance(fn, functools.partial) else getattr(fn, "__func__", fn)
        if not inspect.isfunction(fn) or id(fn) in seen:
            continue
        seen.add(id(fn))
        assigned = _reassigned(fn.__code__)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            if name in assigned:
                state.add(id(cell))
            try:
                value = cell.cell_contents
            except ValueError:               # a cell not yet assigned
                continue
            if inspect.isfunction(value):
                todo.append(value)
    return frozenset(state)


PLAIN = (bool, int, float, str)


def _plain(value: Any, depth: int = 0) -> Any:
    """The plain values in ``value`` (numbers and strings, in tuples / lists / dicts with plain keys), None where it
    holds none; tensors, devices and objects are left out (a patch's own run-time state, SAG's attention maps)."""
    if isinstance(value, PLAIN):
        return value
    if depth < 3 and isinstance(value, (tuple, list)):
        items = tuple(_plain(v, depth + 1) for v in value)
        return items if all(v is not None for v in items) else None
    if depth < 3 and isinstance(value, dict):
        items = [(k, _plain(v, depth + 1)) for k, v in value.items() if isinstance(k, PLAIN)]
        return tuple(sorted(((k, v) for k, v in items if v is not None), key=lambda kv: str(kv[0]))) or None
    return None


@functools.lru_cache(maxsize=256)
def _reassigned(code) -> frozenset:
    """The closure variables a function assigns (``nonlocal`` and stored to): what it keeps between calls, such as
    APG's prev_sigma and running average, which differ between the inversion's record and the replay's while the
    patch's settings are the same."""
    return frozenset(ins.argval for ins in dis.get_instructions(code)
                     if ins.opname in ("STORE_DEREF", "DELETE_DEREF") and ins.argval in code.co_freevars)


def _made_with(fn: Any, depth: int = 0, state: frozenset = frozenset()) -> Any:
    """What a patch callable was made with, as plain values: a function's name and the plain values it closes over
    (a patch node's widgets: PAG's scale, FreeU's factors) except the cells in ``state`` (_state_cells: what the
    patches assign between calls), a partial's arguments, a callable object's public plain attributes. A bound method is read through its function only (its object's state may change while sampling),
    and the edit engine's own patches not at all (check_patches compares what was added after it)."""
    owner = getattr(fn, "__self__", None)
    if depth > 2 or any(getattr(o, "is_inversion_edit_engine", False)
                        for o in (fn, owner, getattr(fn, "engine", None), getattr(fn, "_engine", None))):
        return None
    if isinstance(fn, functools.partial):
        return ("partial", _made_with(fn.func, depth + 1, state), _plain(fn.args), _plain(fn.keywords))
    if inspect.ismethod(fn):
        return _made_with(fn.__func__, depth + 1, state)
    if inspect.isfunction(fn):
        cells = []
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            if id(cell) in state:            # run-time state (APG's prev_sigma, ToMe's u), not a setting
                continue
            try:
                value = cell.cell_contents
            except ValueError:               # a cell not yet assigned
                continue
            made = _made_with(value, depth + 1, state) if inspect.isfunction(value) else _plain(value)
            if made is not None:
                cells.append((name, made))
        return (fn.__qualname__, tuple(cells), _plain(fn.__defaults__))
    if callable(fn) and not isinstance(fn, (type, torch.nn.Module)):
        attrs = getattr(fn, "__dict__", None) or {}
        return (type(fn).__qualname__, _plain({k: v for k, v in attrs.items() if not str(k).startswith("_")}))
    return _plain(fn)


# upstream's patcher extensions that run the same network: torch.compile's APPLY_MODEL wrapper (TorchCompileModel)
SAME_NETWORK_WRAPPERS = ("torch.compile",)


def _extensions(model, opts: dict, to: dict) -> list:
    """What upstream ComfyUI's patcher extensions add around the network, by name: wrappers and callbacks (type, key
    and count; kept on the ModelPatcher and in transformer_options), an optimized_attention_override and context
    windows (a context_handler). EasyCache on the replay model only was not seen by the other kinds (reference model:
    19 dB instead of 58, without a word). Empty on hosts without them (the PyPI fork)."""
    out = []
    for what, holders in (("wrapper", (getattr(model, "wrappers", None), to.get("wrappers"))),
                          ("callback", (getattr(model, "callbacks", None), to.get("callbacks")))):
        for holder in holders:
            for kind, keyed in (holder.items() if isinstance(holder, dict) else ()):
                for key, functions in (keyed.items() if isinstance(keyed, dict) else ()):
                    if functions and key not in SAME_NETWORK_WRAPPERS:
                        out.append(f"{what} {kind}:{key}:{len(functions)}")
    if to.get("optimized_attention_override") is not None:
        out.append("optimized_attention_override")
    if opts.get("context_handler") is not None:
        out.append("context windows")
    return sorted(out)


BASE_TENSORS = 8    # parameters of the diffusion model sampled for base_weights (the first, the last, evenly between)


def base_weights(model) -> Any:
    """A fingerprint (inversion_core/fingerprint.py) of a few parameters of ``model``'s diffusion model as the
    checkpoint holds them: what tells two checkpoints of one architecture apart, which neither the model sampling nor
    the patches do. A parameter the patcher patched in place is read from its backup of the original
    (``ModelPatcher.backup``), so the fingerprint is the same whether the model is unloaded, fully loaded with its
    LoRA merged into the weights, or loaded in lowvram mode (patches applied on the fly); and so is one an upstream
    hook patched while a hooked conditioning is evaluated (``ModelPatcher.hook_backup``, below). They are picked by
    their position among the named parameters: the names, and so the picks, are the same under object patches that
    keep the module names (the edit engine's MMDiT blocks). None, with a warning, when the model has no diffusion
    model or a weight cannot be read."""
    net = getattr(getattr(model, "model", None), "diffusion_model", None)
    # a torch.compile object patch (TorchCompileModel, ModelCompile) wraps the network while it is loaded: its
    # parameter names gain "_orig_mod.", which would read as another checkpoint after the model was unloaded
    net = getattr(net, "_orig_mod", net)
    if not isinstance(net, torch.nn.Module):
        if model is not None:
            warn("model: this ComfyUI's ModelPatcher has no model.diffusion_model network, so another checkpoint "
                 f"between the inversion and the replay is not detected. {unsupported_host('the checkpoint check')}")
        return None
    params = list(net.named_parameters())
    if not params:
        return None
    picks = sorted({round(i * (len(params) - 1) / (BASE_TENSORS - 1)) for i in range(BASE_TENSORS)})
    backup = getattr(model, "backup", None) or {}
    # upstream's hooks (Create Hook LoRA + Cond Set Props / Set CLIP Hooks) write the hooked weights into the network
    # while a hooked conditioning is evaluated and keep what they overwrote in hook_backup, as (weight, device); read
    # inside a hooked inversion, the weights were the hooked ones, and every replay was told "another checkpoint".
    # ``backup`` first: a LoRA merged on load is in the weights the hooks saved
    hook_backup = getattr(model, "hook_backup", None)
    hook_backup = hook_backup if isinstance(hook_backup, dict) else {}
    chosen = []
    for i in picks:
        name, param = params[i]
        key = "diffusion_model." + name
        saved = backup.get(key)
        if saved is not None:
            # the host's backup holds the tensor (the PyPI fork) or a (weight, inplace_update) tuple (upstream)
            param = getattr(saved, "weight", saved)
        elif hook_backup.get(key) is not None:
            saved = hook_backup[key]
            param = saved[0] if isinstance(saved, (tuple, list)) else saved
        chosen.append((name, param))
    out = fingerprint(chosen)
    if out is None:
        warn("model: its weights could not be read (a meta or quantised tensor type?), so another checkpoint between "
             "the inversion and the replay is not detected; the other replay checks still run")
    return out


def check_base_weights(model, signature: Optional[dict], name: str, action: str) -> None:
    """A warning when ``model``'s base weights (base_weights) are not those of the model the latent was inverted with:
    another checkpoint of the same architecture. Not an error: inverting with one checkpoint and editing with a
    fine-tune of it may be meant."""
    old = (signature or {}).get("base")
    if old is None or model is None:
        return
    now = base_weights(model)
    if now is not None and not matches(old, now):
        warn(f"{name}: the model's weights differ from the model this latent was inverted with (another checkpoint?), "
             f"so the {action} runs another network and will not reconstruct the image. Intended (a fine-tune for an "
             "edit)? Then ignore this; for a reconstruction, use the checkpoint the latent was inverted with")


def _differing_patch_kinds(old: dict, now: dict) -> list:
    out = []
    for kind, what in PATCH_KINDS.items():
        if kind not in old:
            continue        # a signature recorded before this kind was (an earlier version of the pack)
        if kind == "weight_values":
            # judged only where keys and strengths agree ("weights" names the rest) and both could be read (a record
            # made before patch contents were fingerprinted has none)
            a, b = old.get(kind), now.get(kind)
            if old.get("weights") == now.get("weights") and a is not None and b is not None and not matches(a, b):
                out.append(what)
        elif kind == "settings":
            # judged only where the same patches are there ("cfg" / "blocks" name the rest)
            if all(old.get(k) == now.get(k) for k in ("cfg", "blocks")) and old.get(kind) != now.get(kind):
                out.append(what)
        elif old.get(kind) != now.get(kind):
            out.append(what)
    return out


def _engine_patches(model) -> list:
    """(slot, engine) for every patch on ``model`` that belongs to an Inversion Edit Engine: attention / Flux block
    replace patches (an ``engine`` attribute), its output block patch (a bound method of the engine), SD3 joint
    blocks (object patches with an ``_engine``). A slot names where the patch sits."""
    opts = getattr(model, "model_options", None) or {}
    to = opts.get("transformer_options") or {}
    found = []
    for kind, patches in (to.get("patches_replace") or {}).items():
        found += [((kind, key), getattr(p, "engine", None))
                  for key, p in (patches.items() if isinstance(patches, dict) else ())]
    for kind, patches in (to.get("patches") or {}).items():
        found += [((kind, i), getattr(p, "__self__", None))
                  for i, p in enumerate(patches if isinstance(patches, (list, tuple)) else ())]
    found += [((name,), getattr(p, "_engine", None)) for name, p in (getattr(model, "object_patches", None) or {}).items()]
    return [(slot, engine) for slot, engine in found if getattr(engine, "is_inversion_edit_engine", False)]


def engine_slots(model, engine) -> frozenset:
    """Where ``engine``'s own patches sit on ``model`` (see _engine_patches); recorded when the engine is built."""
    return frozenset(slot for slot, e in _engine_patches(model) if e is engine)


def _engines_in_patches(model) -> list:
    """The Inversion Edit Engines whose patches ``model`` carries."""
    out = []
    for _, engine in _engine_patches(model):
        if all(engine is not e for e in out):
            out.append(engine)
    return out


def check_engine_wrapper(model, name: str = "model") -> None:
    """An error when ``model`` carries an Inversion Edit Engine's patches but its model function wrapper is not
    that engine: a node after the engine set its own wrapper in the engine's place (the host keeps one), the
    engine's patches never get its context and the edit is the plain replay bit for bit, which only a generic
    'patches differ' warning said (and told an edit to ignore). An error too when a node after the engine replaced
    some of the engine's own patches (an attention replace patch on a layer the engine patched: the host keeps one
    per layer), so those layers silently lost the injection."""
    wrapper = edit_engine_of(model)
    stale = [e for e in _engines_in_patches(model) if e is not wrapper]
    if not stale:
        built = getattr(wrapper, "built_slots", None)
        lost = sorted(built - engine_slots(model, wrapper), key=repr) if built else []
        if lost:
            raise ValueError(
                f"{name}: a node after the Inversion Edit Engine replaced {len(lost)} of the engine's own patches "
                f"({', '.join(_slot_name(slot) for slot in lost[:4])}{' ...' if len(lost) > 4 else ''}; ComfyUI "
                "keeps one patch per layer), so those layers take that node's path and lose the source's features "
                "without a sign in the result. Put that node before the Inversion Edit Engine (the engine then "
                "runs it inside its own patch)")
        return
    now = (getattr(model, "model_options", None) or {}).get("model_function_wrapper")
    raise ValueError(
        f"{name}: it carries the Inversion Edit Engine's attention patches, but its model function wrapper is "
        f"{'another engine' if wrapper is not None else type(now).__name__ if now is not None else 'gone'}: a node "
        "after the engine replaced the engine's wrapper (ComfyUI keeps one per MODEL), so the engine would not run "
        "and the edit would come out as the plain replay. Put that node before the Inversion Edit Engine")


def _slot_name(slot: tuple) -> str:
    """A patch slot (_engine_patches) as a user reads it: 'attn1 output 4.0', 'output_block_patch', an object name."""
    if len(slot) == 1:
        return str(slot[0])
    kind, key = slot
    if isinstance(key, tuple):
        return f"{kind} " + " ".join(str(k) for k in key[:1]) + " " + ".".join(str(k) for k in key[1:])
    return f"{kind} {key}" if not isinstance(key, int) else str(kind)


def check_patches(model, signature: Optional[dict], name: str, action: str) -> None:
    """A warning (a LoRA or FreeU on the edit branch may be meant) when ``model`` carries other patches than the
    model the latent was inverted with: the replay then solves another model's steps and does not reconstruct.
    Another checkpoint underneath is warned too (check_base_weights). An engine's patches without the engine are an
    error (check_engine_wrapper)."""
    if model is not None:
        check_engine_wrapper(model, name)
    built = getattr(edit_engine_of(model) if model is not None else None, "built_signature", None)
    if built:   # the engine compared the model it patched; what differs from the engine's MODEL came after it
        # (its base weights are those of the MODEL the engine compared when it was built: not warned twice)
        old, now = built, raw_patch_signature(model)
        what = (f"patches were added after the Inversion Edit Engine ({{}}); the engine compared the model it "
                f"patched with the inversion's, not these, so the {action} runs another model than the inversion's")
        fix = "otherwise patch the model before the engine and before the inversion node"
    else:
        check_base_weights(model, signature, name, action)
        varies = (signature or {}).get("varies")
        if varies is not None:
            warn(f"{name}: " + varying_model(varies, "this latent was inverted with",
                                             f"the {action} does not give the image back"))
        old = (signature or {}).get("patches")
        now = patch_signature(model) if model is not None else {}
        what = (f"its patches differ from those of the model this latent was inverted with ({{}}), so the {action} "
                "runs another model (measured: FreeU or PAG added only to the replay model, 17-34 dB instead of "
                "88)")
        fix = "for a reconstruction, patch the model before the inversion node too"
    if not old or not now:
        return
    differ = _differing_patch_kinds(old, now)
    if differ:
        warn(f"{name}: {what.format('; '.join(differ))} and will not reconstruct the image. Intended for an edit? "
             f"Then ignore this; {fix}")


# patch kinds that may make the network's output other than a function of its input (a random choice per call,
# state kept between calls); weight patches cannot
VARYING_PATCH_KINDS = ("cfg", "blocks", "wrapper", "extensions", "objects")


def varying_model(difference: float, subject: str, consequence: str) -> str:
    """The warning for a model whose output changed between two evaluations at the same input (Denoiser.
    repeat_difference): ``subject`` "inverted" (at the inversion) or "this latent was inverted with" (at a replay)."""
    lead = "the model's output changed" if subject == "inverted" else f"{subject} a model whose output changed"
    return (f"{lead} between two evaluations at the same input (their difference is {100 * difference:.3g}% of the "
            "model's prediction x - D(x); its first evaluation was repeated once): a patch on the MODEL draws random "
            "numbers on every call or keeps state between calls (TomePatchModel, HyperTile with swap_size above 2, "
            f"APG with momentum, ...), so the inversion solved for a moving target and {consequence} (tiny SD1 + "
            "ToMe: 47-53 dB from BDIA's otherwise bit-exact replay). Leave such a patch off the MODEL of the "
            "inversion and of the replay")


# upstream's EasyCache / LazyCache (their wrapper keys): a model call whose input changed little since the last one
# returns the last output shifted by the input's change instead of evaluating the network
OUTPUT_CACHES = {"easycache": "EasyCache", "lazycache": "LazyCache"}


def check_output_cache(model, who: str) -> None:
    """An error for a MODEL carrying an output cache (OUTPUT_CACHES): an inversion evaluates the model many times at
    nearby inputs, and the cache answers them with stale outputs (on the reference model the host's EasyCache and
    LazyCache stop with a TypeError inside their own wrapper on the ascending schedule)."""
    opts = getattr(model, "model_options", None) or {}
    to = opts.get("transformer_options") or {}
    found = set()
    for holder in (getattr(model, "wrappers", None), to.get("wrappers")):
        for keyed in (holder.values() if isinstance(holder, dict) else ()):
            found |= {OUTPUT_CACHES[k] for k in (keyed if isinstance(keyed, dict) else ()) if k in OUTPUT_CACHES}
    if found:
        raise ValueError(
            f"model: it carries {' / '.join(sorted(found))}, which skips model evaluations and reuses the last output "
            f"when the input changed little: {who} evaluates the model many times at nearby inputs and would solve "
            "for the cache's answers instead of the model's, and no replay could give the image back. Connect the "
            "MODEL before the cache node to the inversion node and to the Inverted Latent Sampler (a cache on the "
            "replay alone is approximate: reference model 19-22 dB instead of 58)")


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
    return {"names": sorted({k for c in chosen for k in c}), "print": fingerprint(chosen)}


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
    return {"count": sum(len(g) for g in groups if isinstance(g, list)), "print": fingerprint(groups)}


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


def _replay_conds(positive: Any, negative: Any, cfg: Optional[float], source_positive: Any = None) -> dict:
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
        if now is not None and not matches(old["print"], now["print"], rtol=CONDITIONING_RTOL):
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
        if now is None or old["print"] is None or now["print"] is None or matches(old["print"], now["print"]):
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
    return {"positive": conditioning_fingerprint(conds.get("positive")), "cfg": cfg, "image_inputs": inputs,
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


def check_replay_cfg(guidance: Optional[dict], positive: Any, negative: Any, cfg: float, name: str,
                     model=None) -> None:
    """A warning when the replay's ``positive`` is the inversion's own but its cfg is not the inversion's: the result
    is then neither the image back nor an edit of the prompt, only the same prompt pushed harder or softer. The caller
    leaves out replays that source correction at strength 1 on every step makes exact at any cfg. Not warned: a
    negative equal to the positive (cfg then changes nothing: the conditional prediction either way), and a MODEL
    carrying the Inversion Edit Engine (it edits with the same prompt: P2P re-weighting, injected features)."""
    old = (guidance or {}).get("cfg")
    if old is None or math.isclose(float(cfg), float(old), rel_tol=1e-6, abs_tol=1e-6):
        return
    if (model is not None and edit_engine_of(model) is not None) or _same_conditioning(positive, negative):
        return
    if is_inversion_prompt(guidance, positive):
        warn(f"{name}: the positive conditioning is the one this latent was inverted with, but cfg is {float(cfg):g} "
             f"where the inversion ran at cfg {float(old):g}: this is neither a reconstruction (that needs the "
             f"inversion's cfg {float(old):g}, or source correction at strength 1 on every step) nor an edit of the "
             f"prompt. Set cfg to {float(old):g} to get the image back; to edit, change the prompt")


def model_family(model) -> str:
    """A coarse family name for presets: "SDXL" for SDXL-format latents, else the latent format's class name.
    ``model`` is a ModelPatcher or the host's BaseModel."""
    base = getattr(model, "model", model)
    fmt = type(getattr(base, "latent_format", None)).__name__
    family = "SDXL" if fmt.startswith("SDXL") else fmt
    # the presets are keyed on the host's latent format class names: a host that renamed them would give every
    # SD1.x / SDXL / SD3 model the default presets instead
    absent = [name for name in PRESET_FAMILIES if not hasattr(comfy.latent_formats, name)]
    if absent and family not in PRESET_FAMILIES:
        warn(f"model: this ComfyUI's comfy.latent_formats has no {', '.join(absent)} (the latent formats the pack's "
             f"presets are keyed on), so this model's {fmt} may be one of them renamed: the edit engine's 'auto' "
             "layers and residual block and EasyInv's preset fall back to the defaults. "
             + unsupported_host("the model-family presets"))
    return family


PRESET_FAMILIES = tuple(FAMILY_LAYERS)      # model_family names with their own presets (EasyInv's: SDXL)


_UNREADABLE = object()   # _per_item_tensors: an entry whose tensors a changed host keeps elsewhere


def _per_item_tensors(c: dict):
    """The tensors of one prepared cond that the host may pair with the batch row by row: its model conds, its region
    mask (ConditioningSetMask) and the hints of its ControlNet chain; _UNREADABLE for a model cond or ControlNet
    without the attribute the host keeps them in (``cond``, ``cond_hint_original``)."""
    if not isinstance(c.get("model_conds"), dict):
        yield _UNREADABLE
        return
    for v in c["model_conds"].values():
        if not hasattr(v, "cond"):
            yield _UNREADABLE
        cond = getattr(v, "cond", None)
        # a list of tensors (upstream's CONDList: Flux Kontext / Qwen-Image-Edit reference latents), each sliced to
        # the leading rows of a sub-batch like any other
        yield from (cond if isinstance(cond, (list, tuple)) else (cond,))
    yield c.get("mask")
    control, seen = c.get("control"), set()
    while control is not None and id(control) not in seen:
        seen.add(id(control))
        yield getattr(control, "cond_hint_original", _UNREADABLE)
        control = getattr(control, "previous_controlnet", None)


def _uniform_conditioning(model_wrap) -> bool:
    """True when nothing in the prepared conds has more than one batch row, so a sub-batch of items can be evaluated on
    its own. The host slices a per-item tensor to the leading rows of a smaller batch (``mask[:n]``, ControlNet's
    ``broadcast_image_to``), which would pair the remaining items with the first items' masks or hints: with any such
    tensor the whole batch is evaluated every time (slower once items converge, never wrong); so it is where the
    prepared conds cannot be read (a host that keeps them, or their tensors, elsewhere than the guider's ``conds``)."""
    conds = getattr(model_wrap, "conds", None)
    if not isinstance(conds, dict):
        return False
    for cond_list in conds.values():
        for c in cond_list:
            if not isinstance(c, dict):
                return False
            for t in _per_item_tensors(c):
                if t is _UNREADABLE or (isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] != 1):
                    return False
    return True


# model_options hooks that see the whole batch's predictions at once: a host cfg function may mix batch items (the
# host's PerpNeg projects with a sum over the whole batch), so a sub-batch would be a different equation; upstream's
# calc_cond_batch function (SkipLayerGuidanceDiTSimple) replaces the whole batch's model call
BATCH_HOOKS = ("sampler_cfg_function", "sampler_post_cfg_function", "sampler_pre_cfg_function",
               "sampler_calc_cond_batch_function")


def _items_independent(model_wrap) -> bool:
    """True when a sub-batch of items may be evaluated on its own (an item that converged stops paying): no per-item
    conditioning tensors (_uniform_conditioning), no cfg hook that sees the whole batch, and the host's own
    CFGGuider.predict_noise (a guider that overrides it, like PerpNegGuider, may combine items). Otherwise the whole
    batch is evaluated every time: slower once items converge, never a different equation (measured with PerpNeg at
    cfg 3 and the exact preset: 35.2 / 55.8 dB with sub-batches against 84.2 / 83.7 with the whole batch)."""
    if not _uniform_conditioning(model_wrap):
        return False
    options = getattr(model_wrap, "model_options", None)
    if not isinstance(options, dict) or any(options.get(k) for k in BATCH_HOOKS):
        return False
    return getattr(type(model_wrap), "predict_noise", None) is comfy.samplers.CFGGuider.predict_noise


PROGRESS_INTERVAL = 0.25   # seconds between progress updates inside one step


class StepProgress:
    """The host's progress callback ``(step index, x0, x, total)``, driven per step *and* per model evaluation.

    ``step(done, total, x, x0)`` reports a finished step (the bar at ``done`` of ``total``, a preview of ``x0``);
    ``on_eval()`` (the Denoiser's hook) moves the bar inside the running step: after k evaluations of this step it
    stands at ``done + 1 − 2^(−k/4)`` (never reaching the next step; an iterative solver's step count is not known in
    advance). Inside-step updates are sent at most every ``interval`` seconds, so fast steps add no messages, and
    they preview the last finished state (no tensor of the running solve leaves it).
    """

    def __init__(self, callback, total: int, interval: Optional[float] = None):
        self.callback, self.total = callback, int(total)
        self.interval = PROGRESS_INTERVAL if interval is None else float(interval)
        self.done, self.evals, self.last_sent = 0, 0, time.perf_counter()
        self.preview: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def start(self, x: torch.Tensor) -> None:
        self.preview = (x, x)
        self.last_sent = time.perf_counter()

    def step(self, done: int, total: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        self.done, self.total, self.evals = int(done), int(total), 0
        self.preview = (x0, x)
        self.last_sent = time.perf_counter()
        if self.callback is not None:
            self.callback(done - 1, x0, x, total)

    def on_eval(self) -> None:
        self.evals += 1
        now = time.perf_counter()
        if self.callback is None or self.preview is None or now - self.last_sent < self.interval:
            return
        self.last_sent = now
        frac = min(1.0 - 2.0 ** (-self.evals / 4.0), 0.99)
        x0, x = self.preview
        self.callback(self.done + frac - 1, x0, x, self.total)


def _host_progress(callback) -> Optional[Callable]:
    """Adapt the core's (step done, total, x, denoised) callback to the host's (step index, x0, x, total) one."""
    if callback is None:
        return None
    return lambda step, total, x, denoised: callback(step - 1, denoised, x, total)


@contextlib.contextmanager
def full_float32():
    """float32 convolutions and matmuls really in float32 while the pack evaluates the model, the settings restored.

    PyTorch lets cuDNN run float32 convolutions in TF32 (10-bit mantissa) by default, and the host keeps that. On a
    GPU that cost an fp32 UNet's inversions what they are for: a batch of two differed from its single runs by ~1e-3
    (1e-5 on a CPU), Exact Invert reached 86 / 79 dB at T=10 / 4 instead of the CPU's 88 / 84, a BDIA batch replayed
    item by item missed by 4e-3, and source correction at cfg > 1 came back 30x worse (tiny SD1.x models, an H200;
    with TF32 off 35 of the suite's 41 such failures passed). Half-precision networks are not affected; only CUDA
    reads the settings, so on a CPU this changes nothing. Only a switch that is on is turned off and back on. (The
    host's k_diffusion tf32_mode reads and writes the legacy flags only, which raises once the newer API was used.)"""
    undo = [_tf32_off(torch.backends.cudnn, getattr(torch.backends.cudnn, "conv", None)),      # convolutions
            _tf32_off(torch.backends.cuda.matmul, torch.backends.cuda.matmul)]                 # matmuls
    try:
        yield
    finally:
        for restore in reversed(undo):
            if restore is not None:
                restore()


def _tf32_off(legacy, new) -> Optional[Callable[[], None]]:
    """Turn one TF32 switch off; returns what turns it back on (None: it was off). ``legacy`` carries the old
    ``allow_tf32`` flag, ``new`` PyTorch's ``fp32_precision`` (2.9+): once a program set the latter for cuBLAS, reading
    the former raises, so the setting is read and restored through the API that set it."""
    try:
        if not legacy.allow_tf32:
            return None
        legacy.allow_tf32 = False
        return lambda: setattr(legacy, "allow_tf32", True)
    except RuntimeError:
        if new is None or getattr(new, "fp32_precision", None) != "tf32":
            return None
        new.fp32_precision = "ieee"
        return lambda: setattr(new, "fp32_precision", "tf32")


def _denoiser(model_wrap, extra_args: dict, on_eval: Optional[Callable[[], None]] = None) -> Denoiser:
    def raw(x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
        with full_float32():
            return model_wrap(x, s, **extra_args)

    return Denoiser(raw, check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                    subset_ok=_items_independent(model_wrap), on_eval=on_eval,
                    input_scale=_input_scale(model_wrap.inner_model.model_sampling),
                    compute_dtype=_compute_dtype(model_wrap.inner_model))


def _compute_dtype(base_model) -> torch.dtype:
    """The dtype the host's network computes in: its manual-cast dtype where set, else its weights' (the host's
    ``apply_model`` casts the network input to it); else (a host without these) its network's first floating weight;
    float32 for a model that does not say."""
    dtype = getattr(base_model, "manual_cast_dtype", None)
    if dtype is None and hasattr(base_model, "get_dtype"):
        dtype = base_model.get_dtype()
    if dtype is None and isinstance(base_model, torch.nn.Module):
        # GNRI sizes its finite-difference step by this dtype: float32 for bf16 weights was 10x off (test_gnri)
        dtype = next((p.dtype for p in base_model.parameters() if p.dtype.is_floating_point), None)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return torch.float32
    # 8-bit weights compute in a 16-bit type here (the host's manual cast, or fp8 matmuls on 16-bit activations)
    return torch.bfloat16 if dtype.itemsize < 2 else dtype


def _input_scale(model_sampling) -> Callable[[float], float]:
    """c_in(σ), the network input scaling of the host's model_sampling (1/√(σ²+1) for EPS/V, 1 for flow)."""
    def c_in(sigma: float) -> float:
        one = torch.ones(1, 1)
        return float(model_sampling.calculate_input(torch.tensor([float(sigma)]), one).flatten()[0])

    return c_in


class _Inverted:
    """The tops of the latest inversions this process made (model sigma space) with their schedules: what the Inverted
    Replay SAMPLER, which sees only a latent and sigmas, checks its input against.

    ComfyUI caches node outputs, so a cached inversion is not run again and is not registered again: an entry must
    outlive many later inversions. Entries are kept by count (``size``) and BDIA trajectories also by bytes
    (``bdia_bytes``: they hold T + 1 latents each). A BDIA top that was dropped is remembered (its top only), so that
    its replay is an error instead of a silent replay with the plain step."""

    def __init__(self, size: int = 64, bdia_bytes: int = 512 * 2 ** 20, forgotten: int = 64):
        self.items: collections.deque = collections.deque(maxlen=size)
        # (trajectory down, gamma, grid, space, (schedule, signature, guidance) as ``add`` keeps them)
        self.bdia: collections.deque = collections.deque()
        self.bdia_size, self.bdia_bytes = int(size), int(bdia_bytes)
        self.forgotten: collections.deque = collections.deque(maxlen=forgotten)   # tops of dropped BDIA entries
        self.lock = threading.Lock()

    def mark_bdia(self, states: list, gamma: float, grid: Optional[float], space: str, schedule: torch.Tensor,
                  signature: Optional[dict] = None, guidance: Optional[dict] = None, masked: bool = False) -> None:
        """A BDIA inversion's trajectory (``states`` x_0 … x_T as the record has them): its top and pair state, and
        the recorded states its replay settles on (solvers/bdia.py: half-precision networks); with what ``add`` keeps
        for every inversion, so that its checks outlive the shorter list of all inversions as long as it is held."""
        down = [s.detach().float().cpu().clone() for s in reversed(states)]
        with self.lock:
            self.bdia.append((down, float(gamma), grid, space, (schedule.clone(), signature, guidance,
                                                                bool(masked))))
            held = sum(sum(z.numel() * z.element_size() for z in entry[0]) for entry in self.bdia)
            while len(self.bdia) > 1 and (len(self.bdia) > self.bdia_size or held > self.bdia_bytes):
                dropped = self.bdia.popleft()[0]
                held -= sum(z.numel() * z.element_size() for z in dropped)
                self.forgotten.append(dropped[0])

    def bdia_for(self, x: torch.Tensor) -> Optional[tuple]:
        """(pair state, gamma, grid, space, trajectory down) when ``x`` is the top of a recent BDIA inversion, or a
        run of its batch items (LatentFromBatch), whose states are sliced alike (replayed with BDIA only). A dropped
        one is an error: the plain step would not give its image back."""
        with self.lock:
            items, forgotten = list(self.bdia), list(self.forgotten)
        hit = _closest([entry[0][0] for entry in items], x)
        if hit is not None:
            (down, gamma, grid, space, _), start = items[hit[0]], hit[1]
            rows = [z[start:start + x.shape[0]] for z in down]
            return (rows[1], gamma, grid, space, rows)
        joined = self._bdia_items(x, items) if x.shape[0] > 1 else None
        if joined is not None:
            return joined
        if any(_rows_of(top, x) is not None for top in forgotten):
            raise ValueError(
                "latent_image: this is the noise of a BDIA inversion this process no longer holds the pair state of "
                f"(it keeps the latest {self.bdia_size} BDIA trajectories, at most {self.bdia_bytes / 2 ** 20:.0f} "
                "MB): ComfyUI reused the cached inversion without running it again, and a replay with the plain step "
                "would not give the image back. Run the inversion again (change one of its inputs, or free the node "
                "cache), or replay the BDIA Invert node's LATENT with the Inverted Latent Sampler (it carries the "
                "pair state)")
        return None

    @staticmethod
    def _bdia_items(x: torch.Tensor, items: list) -> Optional[tuple]:
        """bdia_for for a batch whose items come from different BDIA inversions (LatentBatch of two inversions'
        LATENTs): their trajectories joined item by item, when every item is found; an error when only some are
        BDIA tops, or when their gamma / grid / step count differ (one BDIA replay cannot take them together, and the
        plain step would not give the BDIA items back)."""
        per_item = [None if at is None else ([z[at[1]:at[1] + 1] for z in items[at[0]][0]], *items[at[0]][1:4])
                    for at in _item_sources(x, [entry[0][0] for entry in items])]
        found = [i for i, hit in enumerate(per_item) if hit is not None]
        if not found:
            return None
        if len(found) < len(per_item):
            raise ValueError(
                f"latent_image: batch items {found} of this latent are the noise of BDIA inversions and the others are "
                "not (LatentBatch of a BDIA inversion with another latent?): BDIA items need the BDIA replay and the "
                "others the plain step, which one sampler run cannot do. Replay them separately")
        keys = {(len(hit[0]), hit[1], hit[2], hit[3]) for hit in per_item}
        if len(keys) > 1:
            raise ValueError(
                "latent_image: its batch items are the noise of BDIA inversions with different gamma, grid or number "
                "of steps (LatentBatch of two inversions made with other settings); one replay cannot take them "
                "together. Replay each inversion's LATENT separately")
        _, gamma, grid, space = per_item[0]
        rows = [torch.cat([hit[0][level] for hit in per_item]) for level in range(len(per_item[0][0]))]
        return (rows[1], gamma, grid, space, rows)

    def add(self, top: torch.Tensor, schedule: torch.Tensor, signature: Optional[dict] = None,
            guidance: Optional[dict] = None, masked: bool = False) -> None:
        """``masked``: the inverted LATENT carries a noise_mask in its record (run_inversion), which only the Inverted
        Latent Sampler applies."""
        with self.lock:
            self.items.append((top.detach().float().cpu().clone(), schedule.clone(), signature, guidance,
                               bool(masked)))

    def held_unmasked(self, x: torch.Tensor, schedule: torch.Tensor) -> bool:
        """Whether every batch item of ``x`` is also the noise of a remembered inversion on ``schedule`` whose LATENT
        had no noise_mask: a noise_mask does not change the inversion, so the same image inverted with and without one
        gives equal tops, and ``find`` (the latest) cannot tell which of the two LATENTs ``x`` is."""
        with self.lock:
            items = list(self.items) + [(down[0], *info) for down, _, _, _, info in self.bdia]
        plain = [top for top, s, _, _, masked in items if not masked and same_schedule(s, schedule)]
        return all(any(_rows_of(top, x[i:i + 1]) is not None for top in plain) for i in range(x.shape[0]))

    def find(self, x: torch.Tensor) -> "_Found":
        """The stored inversion whose top is ``x`` (up to its dtype's rounding), or whose batch items ``x`` is a
        contiguous run of (LatentFromBatch); else how ``x`` relates to the closest one if it is a flipped / rotated
        / scaled copy of one."""
        with self.lock:     # then the BDIA inversions, which may be held longer than the list of all inversions
            items = list(self.items) + [(down[0], *info) for down, _, _, _, info in self.bdia]
        hit = _closest([entry[0] for entry in items], x)
        if hit is not None:
            (top, schedule, signature, guidance, masked), start = items[hit[0]], hit[1]
            return _Found(schedule, top[start:start + x.shape[0]], signature, start, top.shape[0], None, guidance,
                          masked, tuple((guidance, start + i) for i in range(x.shape[0])))
        related = None
        for top, schedule, signature, guidance, masked in reversed(items):
            if related is None and top.shape == x.shape:
                change = describe_change(top, x, rtol=_rtol(x.dtype))
                if not change.startswith("changed"):
                    related = change
        if x.shape[0] > 1 and related is None:
            joined = _join_items(x, items)
            if joined is not None:
                return joined
        return _Found(None, None, None, None, None, related, None)


class _Found(NamedTuple):
    schedule: Optional[torch.Tensor]
    top: Optional[torch.Tensor]          # the stored float32 top (the matching rows)
    signature: Optional[dict]            # sampling_signature at inversion time
    start: Optional[int]                 # first matching batch item
    batch: Optional[int]                 # the inversion's batch size
    related: Optional[str]               # no match: how x relates to a stored top (flipped / scaled …), if it does
    guidance: Optional[dict]             # guidance_of the inversion's guider
    masked: bool = False                 # its LATENT's record carries a noise_mask (INVERTED.add)
    items: tuple = ()                    # per batch item of x: (guidance of its inversion, its row there)


def _join_items(x: torch.Tensor, items: list) -> Optional[_Found]:
    """find for a batch whose items are the noise of different inversions (LatentBatch of two inversions' LATENTs):
    one _Found for all of them when every item is found and all were inverted on the same sigmas (the first item's
    model and guidance are checked); an error naming latent_image when they were inverted on different sigmas, which
    one replay cannot follow. None when some item is no remembered inversion's."""
    sources = _item_sources(x, [entry[0] for entry in items])
    if any(at is None for at in sources):
        return None
    hits = [(items[k][0][start:start + 1], *items[k][1:]) for k, start in sources]
    schedule = hits[0][1]
    for i, hit in enumerate(hits[1:], 1):
        if not same_schedule(hit[1], schedule):
            raise ValueError(
                f"latent_image: its batch items are the noise of inversions made on different sigmas (item 0 on "
                f"{_levels(schedule)}, item {i} on {_levels(hit[1])}: LatentBatch of two inversions with other steps or "
                "schedulers); one replay runs one schedule and would not give every image back. Replay each "
                "inversion's LATENT on its own sigmas")
    # the replay is compared with item 0's model and guidance only (one _Found): say so where other items differ
    other = [i for i, hit in enumerate(hits[1:], 1)
             if not matches(hit[2], hits[0][2]) or not matches(hit[3], hits[0][3], CONDITIONING_RTOL)]
    if other:
        warn(f"latent_image: its batch items {other} are the noise of inversions made with another model or another "
             "prompt / cfg than item 0 (LatentBatch of several inversions); this replay is compared with item 0's "
             "only and runs one model and one guider for all items, so an item inverted otherwise comes back only "
             "if the guider gives each item its own prompt (a batch of prompts) on the same model. Otherwise replay "
             "each inversion's LATENT separately")
    return _Found(schedule, torch.cat([hit[0] for hit in hits]), hits[0][2], 0, x.shape[0], None, hits[0][3],
                  any(hit[4] for hit in hits), tuple((items[k][3], start) for k, start in sources))


def same_schedule(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two sigma schedules are the same levels (up to the rounding of a SIGMAS input's dtype)."""
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def _item_sources(x: torch.Tensor, tops: list) -> list[Optional[tuple[int, int]]]:
    """Per batch item of ``x``: (k, i) where it is batch item i of ``tops[k]`` (the closest such, _closest), or
    None."""
    return [_closest(tops, x[i:i + 1]) for i in range(x.shape[0])]


def _closest(tops: list, x: torch.Tensor) -> Optional[tuple[int, int]]:
    """(k, i): the stored top ``tops[k]`` whose batch items i .. i + len(x) - 1 are ``x`` up to x's dtype rounding,
    the closest of those that are (the latest on a tie), or None. Not the latest that matches: two inversions of one
    image by exact methods can lie within that rounding tolerance of each other (tiny Wan 2.1 on upstream, T=4:
    Exact preset exact and GNRI newton), and the Inverted Replay SAMPLER then replayed the other one's top (97.8 dB
    instead of 116.3) and checked the latent against the other one's record."""
    best, best_diff = None, math.inf
    for k in reversed(range(len(tops))):
        hit = _rows_of(tops[k], x)
        if hit is not None and hit[1] < best_diff:
            best, best_diff = (k, hit[0]), hit[1]
    return best


def _rows_of(top: torch.Tensor, x: torch.Tensor) -> Optional[tuple[int, float]]:
    """(i, relative RMS difference) for the batch item i whose run top[i:i + len(x)] is closest to ``x`` among those
    equal to it up to x's dtype rounding (record.relative_difference, describe_change's measure), or None."""
    b = x.shape[0]
    if top.shape[1:] != x.shape[1:] or b > top.shape[0]:
        return None
    xf, best = x.detach().float().cpu(), None      # once: the stored tops are CPU float32 already
    for i in range(top.shape[0] - b + 1):
        diff = relative_difference(top[i:i + b], xf)
        if diff <= _rtol(x.dtype) and (best is None or diff < best[1]):
            best = (i, diff)
    return best


INVERTED = _Inverted()


class InversionSampler(comfy.samplers.Sampler):
    """A host SAMPLER that *inverts*: given a schedule (ascending, e.g. from FlipSigmas, or descending) it walks the
    latent from the lowest level up to the highest and returns the noise there. ``record`` holds the last run.
    ``partial``: the caller asked for a partial inversion (denoise < 1), so a top below σ_max is intended."""

    def __init__(self, solver: StepSolver, method: str, params: dict[str, Any], hooks: Sequence[StepHook] = (),
                 resolve_family: Optional[Callable[[str], None]] = None):
        self.solver, self.method, self.params, self.hooks = solver, method, dict(params), tuple(hooks)
        self.resolve_family = resolve_family     # settings that depend on the model family, known only here
        self.record: Optional[InversionRecord] = None
        self.partial = False
        self.masked = False     # run_inversion: the LATENT had a noise_mask, which moves into the record

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        schedule = as_sampling_schedule(sigmas, "sigmas")
        x0 = latent_image if latent_image is not None else noise
        empty = latent_image is not None and not bool(torch.count_nonzero(latent_image))
        if empty:
            x0 = model_wrap.inner_model.process_latent_in(latent_image)
        check_guider_conditioning(model_wrap, x0.shape[0], f"the {self.method} inversion SAMPLER")
        if denoise_mask is not None:
            warn(f"{self.method} inversion: the latent's noise_mask does not limit the inversion (the whole image is "
                 "inverted; SetLatentNoiseMask, InpaintModelConditioning and VAEEncodeForInpaint set one), and "
                 "SamplerCustomAdvanced keeps it on its output LATENT: the Inverted Replay SAMPLER "
                 "refuses it and a stock sampler would keep the area outside the mask as the inverted noise. For a "
                 "masked edit, invert with an Invert node and give the mask to the Inverted Latent Sampler")
        patcher = guider_patcher(model_wrap)
        check_output_cache(patcher, f"{self.method} inversion")
        patches = patch_signature(patcher)
        progress = StepProgress(callback, len(schedule) - 1)
        progress.start(x0)
        den = _denoiser(model_wrap, extra_args, on_eval=progress.on_eval)
        # a patch around the network may be random or keep state between calls: checked once, after the inversion
        # (a plain network, or weight patches only, is a function of its input: no check, no extra evaluation)
        den.remember_first = any(patches.get(k) for k in VARYING_PATCH_KINDS)
        self.denoiser = den                      # its counts, even when the run fails (grad_mode retries count them)
        if self.resolve_family is not None:
            self.resolve_family(model_family(model_wrap.inner_model))
        ms = model_wrap.inner_model.model_sampling
        kind = model_kind(ms)
        above = top_above_model(schedule, ms, kind)
        # the whole solve, not only each forward call (_denoiser): PreciseInv's backward passes run after the forward
        # returned, and ran in TF32 on a GPU
        with full_float32():
            self.record = invert(den, x0, schedule, self.solver, method=self.method, params=self.params,
                                 hooks=self.hooks, callback=lambda step, total, x: progress.step(step, total, x, x),
                                 model_kind=kind)
        self.record.model_sigma_max = float(ms.sigma_max)
        self.record.model_signature = dict(sampling_signature(ms, schedule), patches=patches,
                                           base=base_weights(patcher))
        evals = den.forward_evals
        varies = den.repeat_difference()
        self.record.check_evals = den.forward_evals - evals
        if varies is not None and varies > den.repeat_rtol():
            self.record.model_signature["varies"] = varies
            self.record.warnings.append(varying_model(varies, "inverted", "no replay can give the image back"))
            warn(f"{self.method} inversion: {self.record.warnings[-1]}")
        self.record.guidance = guidance_of(model_wrap)
        short = reach_message(schedule, self.record.model_sigma_max, kind)
        if short is not None:
            if self.partial:
                self.record.warnings.append(f"partial inversion (denoise < 1): {short}")
            else:
                self.record.warnings.append(short + "; for a full inversion use a scheduler that starts at sigma_max "
                                            "(karras, normal, simple, sgm_uniform); if a partial inversion was meant "
                                            "(denoise < 1 on the scheduler), this is expected")
                warn(f"{self.method} inversion: {self.record.warnings[-1]}")
        for said in [above, ignored_noise(noise, latent_image), self._blown_up(schedule, kind),
                     EMPTY_LATENT if empty else None, scheduled_hooks(model_wrap),
                     missed_tolerance(self.record, self.method, self.params)]:
            if said:
                self.record.warnings.append(said)
                warn(f"{self.method} inversion: {said}")
        for hook in self.hooks:
            notice = getattr(hook, "notice", None)
            said = notice(len(self.record.steps)) if notice is not None else None
            if said:
                self.record.warnings.append(said)
                warn(f"{self.method} inversion: {said}")
        if float(schedule[-1]) > 0.0:
            self.record.warnings.append(
                f"the schedule ends at sigma {float(schedule[-1]):.4g}, not 0: the input latent was taken as the noisy "
                "latent at that level, not as the clean image, and a replay stops there without denoising (edits "
                "come out noisy). To invert an image give a schedule that ends at 0 (for a partial inversion: "
                "denoise < 1, or the low half of SplitSigmas)")
            warn(f"{self.method} inversion: {self.record.warnings[-1]}")
        top = self.record.states[-1]
        INVERTED.add(top, schedule, self.record.model_signature, self.record.guidance, masked=self.masked)
        return top.to(device=x0.device)

    def _blown_up(self, schedule: torch.Tensor, kind: str) -> Optional[str]:
        """A note when the inverted latent is far larger than noise at the schedule's top (noise_scale_message)."""
        said = noise_scale_message(self.record.states[0], self.record.states[-1], float(schedule[0]), kind)
        if said and self.method == BDIA:
            said += (f". BDIA's inversion divides by gamma at every step, so a component of the pair grows like "
                     f"(1/gamma)^T (here gamma {float(self.params.get('gamma') or 0):.4g}, T = {len(schedule) - 1}; "
                     "at gamma 0.7 from about T = 20): set gamma to -1 (auto: 0.7^(10/T) above 10 steps, 1.9x the "
                     "noise level at T = 50 on the EPS reference model), a gamma closer to 1, or fewer steps")
        return said


def tolerance_promise(method: str, params: dict) -> Optional[tuple[float, str, str]]:
    """(RMS bound per step, what it bounds, the cap on the effort) for a method whose promise is a tolerance (Exact
    Invert's exact and custom presets, PreciseInv's loss threshold); None for those that promise an effort (Exact fast
    / balanced, GNRI: evaluations) or nothing measurable. The Inversion Report reads its promise from here too."""
    if method == "exact" and params.get("preset") not in ("fast", "balanced"):
        return float(params.get("tolerance") or 0.0), "RMS residual", f"{params.get('budget')} evaluations"
    if method == "preciseinv":
        eta = float(params.get("threshold") or 0.0)      # a mean squared mismatch; the steps record its root
        return eta ** 0.5, f"RMS mismatch (loss threshold {eta:g})", f"{params.get('max_iterations')} iterations"
    return None


def missed_tolerance(record: InversionRecord, method: str, params: dict) -> Optional[str]:
    """A note when a method whose promise is a tolerance (tolerance_promise) left steps above it: the replay
    reconstructs less exactly than asked, and the user should know where and what helps. The budgeted presets promise
    evaluations, not a residual: not said."""
    promise = tolerance_promise(method, params)
    if promise is None:
        return None
    bound, what, cap = promise
    missed = [(i, st) for i, st in enumerate(record.steps)
              if st.converged is False and st.residual and max(st.residual) > bound]
    if not missed:
        return None
    steps = ", ".join(f"step {i + 1} (sigma {st.sigma_lo:.3g} -> {st.sigma_hi:.3g}): {max(st.residual):.1e}"
                      + (" (stopped by the stall input)" if str(st.note).startswith("stalled") else "")
                      for i, st in missed)
    said = (f"{len(missed)} of {len(record.steps)} steps stopped above the {what} {bound:.1e} within {cap}: "
            f"{steps}. The replay reconstructs less exactly there (the result is returned).")
    if missed[0][0] == 0:
        said += (" The first step inverts the replay's last one, the denoiser itself from sigma "
                 f"{record.steps[0].sigma_hi:.3g}, and the larger that lowest level is against the next, the "
                 "harder; a scheduler whose low levels shrink geometrically (exponential, karras) or more steps make "
                 "it easier (flow reference model, T=10, exact preset: 90 / 88 dB on exponential / karras against 59 "
                 "on simple), and BDIA Invert is exact on any schedule.")
    if any(i > 0 for i, _ in missed):
        said += " On the later steps more steps (smaller ones) or a larger budget help."
    return said


# The host's guider leaves an all-zero latent in the LATENT's format (it skips process_latent_in for an empty latent
# image), while it converts the sampler's output back with process_latent_out: for a latent format with a shift (SD3
# 0.0609, Flux 0.1159) the inversion of the zeros would be the inversion of another latent, and its replay returned
# the shift (tiny SD3: 0.0609 on average, max 0.071) instead of the zeros. InversionSampler converts it itself.
EMPTY_LATENT = ("the latent is all zeros (an empty latent image, not a VAE-encoded image?): the result is the noise "
                "that regenerates an empty latent. To invert an image, connect VAE Encode's LATENT")


def top_above_model(schedule: torch.Tensor, ms, kind: str) -> Optional[str]:
    """An error for a flow model asked to go above σ = 1 (x = (1 − σ)·x0 + σ·ε means nothing there); for other models
    a warning when the schedule starts above the model's σ_max (SIGMAS made for another model): the network is then
    evaluated outside the noise levels it knows (its timestep clamps at the top)."""
    top, sigma_max = float(schedule.max()), float(ms.sigma_max)
    if top <= sigma_max * 1.01:
        return None
    where = (f"the schedule starts at sigma {top:.4g}, above this model's sigma_max {sigma_max:.4g} (SIGMAS made for "
             "another model? KarrasScheduler's default sigma_max 14.6 is SD1's)")
    if kind == "CONST":
        raise ValueError(f"sigmas: {where}; a flow model's latent is (1 - sigma)·image + sigma·noise, which has no "
                         "meaning above sigma 1. Use BasicScheduler with this model, or sigmas up to its sigma_max")
    return where + ": the model is evaluated outside the noise levels it was trained on, and edits from there " \
                   "behave unlike the model's own generations"


def ignored_noise(noise: Optional[torch.Tensor], latent_image: Optional[torch.Tensor]) -> Optional[str]:
    """A note when a sampler that adds no noise was handed a non-zero NOISE (SamplerCustom add_noise on, or a
    RandomNoise node): inversion and its replay are deterministic, so it is not used."""
    if latent_image is None or noise is None or not bool((noise != 0).any()):
        return None
    return ("the NOISE input (add_noise on / RandomNoise) is not used: inversion and its replay add no noise. Set "
            "add_noise off (SamplerCustom) or connect DisableNoise (SamplerCustomAdvanced) to silence this")


class ReplaySampler(comfy.samplers.Sampler):
    """A host SAMPLER that regenerates from inverted noise: the deterministic step every inversion inverts, down
    the given (descending) schedule, no noise added. Optional source-correction offsets and a mask that pins the
    region outside it to the stored trajectory (see inversion_core/replay.py).

    ``checked``: the caller (the Inverted Latent Sampler) already checked the latent against its inversion record.
    Otherwise (the Inverted Replay SAMPLER in SamplerCustomAdvanced, which sees only a latent and sigmas) the latent
    is looked up among this process's latest inversions: one inverted on other sigmas is an error; a latent that is
    no inversion's top (plain, changed after inversion, or from an earlier session) is replayed with a warning."""

    def __init__(self, offsets=None, weights=None, mask: Optional[torch.Tensor] = None, states_down=None,
                 checked: bool = False, bdia: Optional[tuple] = None):
        self.offsets, self.weights, self.mask, self.states_down = offsets, weights, mask, states_down
        self.checked = checked
        self.bdia = bdia        # (pair state or None, gamma, grid, space, trajectory down or None): replay with the
        #                         BDIA step (inversion_core/solvers/bdia.py)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        schedule = as_sampling_schedule(sigmas, "sigmas")
        x_top = latent_image if latent_image is not None else noise
        check_guider_conditioning(model_wrap, x_top.shape[0], "the Inverted Replay SAMPLER")
        if denoise_mask is not None and self.mask is None:
            raise ValueError("latent noise_mask: this latent carries a noise_mask (SetLatentNoiseMask, "
                             "InpaintModelConditioning, VAEEncodeForInpaint), which SamplerCustomAdvanced hands over "
                             "as a masked edit; a masked edit needs the stored inversion trajectory. Replay an Invert "
                             "node's LATENT with the Inverted Latent Sampler (it applies the mask), or invert and "
                             "replay a latent without one (VAEEncode; InpaintModelConditioning with noise_mask off)")
        bdia = self.bdia
        if not self.checked:
            said = ignored_noise(noise, latent_image)
            if said:
                warn(f"Inverted Replay SAMPLER: {said}")
            stored_top = check_replay_input(x_top, schedule, model_wrap.inner_model.model_sampling,
                                            guider_patcher(model_wrap), guider=model_wrap)
            bdia = bdia or INVERTED.bdia_for(x_top)     # a BDIA top is never replayed with the plain step
            if stored_top is not None and describe_change(stored_top, x_top, rtol=FLOAT32_ROUND_TRIP) is not None:
                x_top = stored_top.to(device=x_top.device)   # a half-precision copy: the inversion's float32 top
        den = _denoiser(model_wrap, extra_args)
        engine = edit_engine_of(getattr(model_wrap, "model_patcher", None))
        calls = engine.stats["calls"] if engine is not None else 0
        if bdia is not None:
            pair = None if bdia[0] is None else bdia[0].to(device=x_top.device)
            out = bdia_replay(den, x_top, pair, schedule, bdia[1], callback=_host_progress(callback), grid=bdia[2],
                              space=bdia[3], offsets=self.offsets, weights=self.weights, mask=self.mask,
                              states_down=self.states_down, recorded=bdia[4])
        else:
            out = replay(den, x_top, schedule, callback=_host_progress(callback), offsets=self.offsets,
                         weights=self.weights, mask=self.mask, states_down=self.states_down)
        if engine is not None and engine.stats["calls"] == calls:
            # the engine is the MODEL's model function wrapper: a host that no longer calls it returned the plain
            # replay as the edit (tiny SD1: bit for bit)
            raise RuntimeError("Inversion Edit Engine: the host evaluated the model without calling its "
                               "model_options['model_function_wrapper'] (the engine), so the edit would be the plain "
                               f"replay. {unsupported_host('the edit engine')}")
        return out.to(device=x_top.device)


def _levels(schedule: torch.Tensor, n: int = 6) -> str:
    v = [f"{x:.4g}" for x in schedule.tolist()]
    return "[" + ", ".join(v if len(v) <= n else v[:n - 1] + ["...", v[-1]]) + f"] ({len(v) - 1} steps)"


def check_replay_input(x_top: torch.Tensor, schedule: torch.Tensor, ms=None, patcher=None,
                       guider=None) -> Optional[torch.Tensor]:
    """The Inverted Replay SAMPLER's guard (see ReplaySampler): the float32 top of the inversion ``x_top`` is (a stored
    copy of, or a run of its batch items), or None when it is none of the remembered ones. With the model's
    ``ms`` (model_sampling), a different model sampling than the inversion's is an error (check_sampling); with the
    replay's ``guider``, the inversion's prompt at another cfg is warned (check_replay_cfg)."""
    if patcher is not None:
        check_engine_wrapper(patcher)        # whether or not the latent is a remembered one
    found = INVERTED.find(x_top)
    if found.schedule is not None:
        stored = found.schedule
        if not same_schedule(stored, schedule):
            part = ("" if found.batch == x_top.shape[0] else
                    f" (batch items {found.start}..{found.start + x_top.shape[0] - 1} of {found.batch})")
            raise ValueError(
                f"sigmas: this latent{part} was inverted on sigmas {_levels(stored)} but the replay got "
                f"{_levels(schedule)}; replaying on other levels does not give the image back. Connect the same "
                "(descending) sigmas the inversion used, before FlipSigmas")
        if ms is not None:
            check_sampling(ms, schedule, found.signature, "model", "replay")
        check_patches(patcher, found.signature, "model", "replay")
        if found.masked:
            # the same image inverted without the mask has the same noise, and the latest wins in find: a workflow
            # with both Invert nodes was told that the unmasked one's LATENT (a fine replay) had its mask dropped
            both = INVERTED.held_unmasked(x_top, stored)
            warn("Inverted Replay SAMPLER: " + (
                "this latent is the noise of an image inverted from a LATENT with a noise_mask (SetLatentNoiseMask) "
                "and also without one (equal noise: the mask does not change the inversion), so which Invert node's "
                "LATENT it is cannot be told: if the masked one's, the mask is not applied; if the other's, ignore "
                "this. " if both
                else "this latent was inverted from a LATENT with a noise_mask (SetLatentNoiseMask). ") +
                 "The inversion node keeps the mask in its LATENT's record for the Inverted "
                 "Latent Sampler; SamplerCustomAdvanced hands this sampler only the samples, so the mask is not "
                 "applied and the whole image is edited (tiny SD1, an edit at cfg 3: the area outside the mask 0.67 "
                 "relative RMS away from the image instead of 0). For a masked edit, replay the inversion node's "
                 "LATENT with the Inverted Latent Sampler")
        cfg = guider_cfg(guider) if guider is not None else None
        conds = guider_conds(guider)
        if cfg is not None:
            check_replay_cfg(found.guidance, conds.get("positive"), conds.get("negative"), cfg,
                             "Inverted Replay SAMPLER: cfg", patcher)
        if guider is not None:
            check_replay_guider(found.guidance, guider, conds.get("positive"), conds.get("negative"),
                                "Inverted Replay SAMPLER: guider", patcher)
        replay_conds = _replay_conds(conds.get("positive"), conds.get("negative"), cfg)
        by_row = check_item_pairing(found, conds.get("positive"), "Inverted Replay SAMPLER: ",
                                    negative=(replay_conds.get("negative") or (None,))[0])
        check_model_inputs(found.guidance, replay_conds, "replay", "Inverted Replay SAMPLER: ", by_row=by_row)
        return found.top
    if found.related is not None:
        warn(f"Inverted Replay SAMPLER: latent_image is a recent inversion's noise {found.related} after the "
             "inversion; replaying it anyway (the result is not a reconstruction). Connect the inversion's output "
             "directly if that was not meant")
    else:
        warn("Inverted Replay SAMPLER: latent_image is not the noise (nor a run of batch items of it) of any of the "
             f"last {INVERTED.items.maxlen} inversions this process remembers (a plain latent, noise changed after "
             "inversion, an older inversion whose cached output ComfyUI reused, or one from an earlier session), so "
             "its sigmas cannot be checked and a "
             "BDIA inversion's pair state cannot be found; replaying it anyway with the plain step on the given "
             "sigmas. For a reconstruction, connect the inversion's output and its sigmas directly (the Inverted "
             "Latent Sampler reads them from the LATENT and always checks)")


class _OffsetSampler(comfy.samplers.Sampler):
    """Runs only the source branch over the stored trajectory to compute the DirectInversion offsets."""

    def __init__(self, states_down, weights, bdia: Optional[tuple] = None):
        self.states_down, self.weights, self.offsets = states_down, weights, None
        self.bdia = bdia

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        schedule = as_sampling_schedule(sigmas, "sigmas")
        den = _denoiser(model_wrap, extra_args)
        device = latent_image.device
        states = [s.to(device) for s in self.states_down]

        if self.bdia is not None:
            self.offsets = bdia_source_offsets(den, states, schedule, self.bdia[1], self.weights,
                                               callback=_host_progress(callback), space=self.bdia[3])
            return latent_image
        self.offsets = source_offsets(den, states, schedule, self.weights, callback=_host_progress(callback))
        return latent_image


# ---------------------------------------------------------------------------------------------------------------
# input checks shared by the nodes (errors name the input)

def check_latent(model, latent: Any, name: str = "latent") -> torch.Tensor:
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{name}: expected a LATENT (a dict with 'samples'), got {type(latent).__name__}")
    samples = latent["samples"]
    fmt = getattr(model.model, "latent_format", None)
    # the host's latent formats say how many axes follow [batch, channels]: 2 for images, 3 for video models (Wan,
    # HunyuanVideo, LTXV, Cosmos) and for Qwen-Image, whose VAE encodes an image as one frame (the PyPI fork's
    # formats have no such attribute: images)
    dims = int(getattr(fmt, "latent_dimensions", 2))
    if dims not in (2, 3):
        raise ValueError(f"{name}: this model works on {dims}-D latents (audio, 3-D shapes: [batch, channels, "
                         "length]); the pack inverts image and video latents only")
    if samples.ndim == 4 and dims == 3:
        samples = samples.unsqueeze(2)   # an image latent (EmptySD3LatentImage) as one frame, as the host's samplers do
    if samples.ndim != 2 + dims:
        layout = "[batch, channels, height, width]" if dims == 2 else "[batch, channels, frames, height, width]"
        raise ValueError(f"{name}: this model works on latents {layout}, got shape {tuple(samples.shape)}"
                         + ("; a video latent does not fit an image model" if samples.ndim == 5 else ""))
    want = getattr(fmt, "latent_channels", None)
    if want is not None and samples.shape[1] != want:
        raise ValueError(f"{name}: has {samples.shape[1]} channels but this model works on {want}-channel "
                         "latents; encode the image with this model's VAE")
    if not torch.isfinite(samples).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return samples


def check_conditioning(cond: Any, batch: int, name: str) -> None:
    if not isinstance(cond, list) or not cond:
        raise ValueError(f"{name}: expected a CONDITIONING (connect a text encode node)")
    for c in cond:
        b = c[0].shape[0]
        if b not in (1, batch):
            raise ValueError(f"{name}: conditioning batch is {b} but the latent batch is {batch}; "
                             "use one prompt for all images or one per image")


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


def schedule_from_inputs(model, steps: int, scheduler: str, sigmas: Optional[torch.Tensor],
                         denoise: float = 1.0) -> torch.Tensor:
    """The descending sampling schedule: the optional SIGMAS input wins over steps + scheduler (+ denoise, which
    keeps the lowest ``steps`` levels of a ``steps / denoise`` schedule, exactly as the host's BasicScheduler)."""
    if sigmas is not None:
        return as_sampling_schedule(sigmas, "sigmas")
    if int(steps) < 1:
        raise ValueError(f"steps: must be at least 1, got {steps}")
    if not 0.0 < float(denoise) <= 1.0:
        raise ValueError(f"denoise: must be in (0, 1], got {denoise}")
    ms = model.get_model_object("model_sampling")
    total = int(steps) if denoise >= 1.0 else int(int(steps) / float(denoise))
    if scheduler == AUTO_SCHEDULER:
        scheduler = scheduler_for(model_kind(ms), total)
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise ValueError(f"scheduler: unknown scheduler {scheduler!r}; one of "
                         f"{[AUTO_SCHEDULER, *comfy.samplers.SCHEDULER_NAMES]}")
    full = comfy.samplers.calculate_sigmas(ms, scheduler, total).cpu()
    # the lowest steps + 1 levels, as BasicScheduler: ddim_uniform's extra top level for some T (KSampler runs it) is
    # dropped, so the node inverts exactly T steps
    return as_sampling_schedule(full[-(int(steps) + 1):], "scheduler")


def _progress_callback(model, steps: int) -> Callable:
    import latent_preview  # the host's module (a vanilla top-level name in every ComfyUI)

    return latent_preview.prepare_callback(model, steps)


def _guide(model, positive, negative, cfg: float, samples: torch.Tensor, sampler, sigmas: torch.Tensor,
           seed: int = 0) -> torch.Tensor:
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(float(cfg))
    callback = _progress_callback(model, len(sigmas) - 1)
    return guider.sample(torch.zeros_like(samples), samples, sampler, sigmas, denoise_mask=None,
                         callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)


def run_inversion(model, positive, negative, cfg: float, latent: dict, schedule: torch.Tensor,
                  sampler: InversionSampler, partial: bool = False) -> dict:
    """Invert ``latent`` on the descending ``schedule``; return a new inverted LATENT (the input is not modified).
    ``partial``: denoise < 1 was asked for, so a top below the model's σ_max is intended (recorded, not warned)."""
    samples = check_latent(model, latent)
    check_conditioning(positive, samples.shape[0], "positive")
    check_conditioning(negative, samples.shape[0], "negative")
    if cfg < 0 or cfg != cfg:
        raise ValueError(f"cfg: must be >= 0, got {cfg}")
    sampler.partial = bool(partial)
    sampler.masked = latent.get("noise_mask") is not None
    top = _guide(model, positive, negative, cfg, samples, sampler, schedule.flip(0))
    entry = sampler.record.to_latent_entry()
    entry["params"]["cfg"] = float(cfg)
    # a noise_mask moves into the record: the Inverted Latent Sampler reads it from there, and a stock sampler given
    # the inverted LATENT would otherwise inpaint, pinning the area outside the mask to the inverted noise (5.8 dB)
    out = {k: v for k, v in latent.items() if k not in ("samples", LATENT_KEY, "noise_mask")}
    if latent.get("noise_mask") is not None:
        entry["noise_mask"] = latent["noise_mask"]
    out["samples"] = top.to(samples.dtype).cpu()
    entry["top_samples"] = out["samples"].clone()    # what `samples` must still be (host latent format)
    if out["samples"].dtype != torch.float32:
        # a half-precision LATENT rounds the inverted noise (fp16: 120 -> 73 dB for BDIA, bf16: 56); the replay of
        # unchanged samples starts from this float32 copy instead
        entry["top_float32"] = top.float().cpu().clone()
    out[LATENT_KEY] = entry
    return out


def read_inverted(latent: Any, name: str = "latent") -> tuple[torch.Tensor, dict]:
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{name}: expected a LATENT (a dict with 'samples'), got {type(latent).__name__}")
    try:
        entry = read_latent_entry(latent, latent["samples"].shape)
    except MissingInversionRecord:
        raise ValueError(
            f"{name}: this LATENT carries no inversion schedule. Connect the LATENT output of an inversion node "
            f"({INVERSION_NODES}) directly; nodes that rebuild latents drop it.") from None
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return latent["samples"], entry


FLOAT32_ROUND_TRIP = 1e-5   # relative RMS a float32 top keeps through the latent format's scale in and out


def _rtol(dtype: torch.dtype) -> float:
    """How far a stored latent may drift from the record's top by storage alone (dtype rounding, latent format)."""
    return 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3


def samples_change(samples: torch.Tensor, entry: dict) -> Optional[str]:
    """None when ``samples`` (a LATENT's) is still the inverted noise the record ``entry`` holds; otherwise what
    happened to it (see inversion_core.record.describe_change)."""
    top = entry.get("top_samples")
    if not isinstance(top, torch.Tensor):
        return None
    return describe_change(top, samples, rtol=_rtol(samples.dtype))


REPLAY_MASK_EMPTY = ("so nothing is edited: every replay step is pinned to the stored trajectory and the result is the "
                     "reconstruction. (LoadImage's MASK of an image without an alpha channel is all 0: paint a mask, "
                     "or use InvertMask / a SolidMask of 1 to edit everywhere)")


def _mask_for(mask: Optional[torch.Tensor], samples: torch.Tensor, name: str,
              empty: str = REPLAY_MASK_EMPTY) -> Optional[torch.Tensor]:
    """A MASK ([H, W], [B, H, W] or [B, 1, H, W], 1 = edit) resized to the latent (bilinear, as the host's samplers
    resize noise masks) → [B or 1, 1, h, w], or [B or 1, 1, 1, h, w] for a single-frame 5-D latent (Qwen-Image).
    For a video latent [B, C, T, h, w] with T > 1 the MASK's items are frames, as the host reads a video's noise mask
    (comfy.utils.reshape_mask): [N, H, W] → [1, 1, T, h, w] (trilinear over frames), shared by the batch.
    ``empty``: what an all-zero mask means for the caller (warned)."""
    if mask is None:
        return None
    m = mask.float()
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1:
        raise ValueError(f"{name}: expected a MASK [height, width] or [batch, height, width], got {tuple(mask.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError(f"{name}: contains NaN or inf")
    (mh, mw), (lh, lw) = m.shape[-2:], samples.shape[-2:]
    # a latent's size is the image's over the VAE's factor, rounded: mask_h * lw - mask_w * lh stays within
    # mask_h + mask_w for a mask of the image (or of the latent) at any factor; beyond that it is another aspect ratio
    if abs(mh * lw - mw * lh) > mh + mw:
        warn(f"{name}: the mask is {mw}x{mh} (width x height) but the latent is {lw}x{lh}, another aspect ratio: it is "
             "stretched onto the latent, so its regions land elsewhere than drawn (a mask of another image?). Resize "
             "or crop the mask to the image the latent was encoded from")
    video = samples.ndim == 5 and samples.shape[2] > 1
    if video:
        m = m.reshape(1, 1, -1, *m.shape[-2:])
        if tuple(m.shape[-3:]) != tuple(samples.shape[-3:]):
            m = torch.nn.functional.interpolate(m, size=samples.shape[-3:], mode="trilinear", align_corners=False)
    else:
        if m.shape[0] not in (1, samples.shape[0]):
            raise ValueError(f"{name}: mask batch is {m.shape[0]} but the latent batch is {samples.shape[0]}")
        if tuple(m.shape[-2:]) != tuple(samples.shape[-2:]):
            m = torch.nn.functional.interpolate(m, size=samples.shape[-2:], mode="bilinear", align_corners=False)
        # [B, 1, h, w] → [B, 1, (1,) h, w]: one singleton per axis between channels and height (a frame axis)
        m = m.reshape(m.shape[:2] + (1,) * (samples.ndim - 4) + m.shape[-2:])
    m = m.clamp(0.0, 1.0)
    if float(m.max()) == 0.0:
        warn(f"{name}: the mask is 0 everywhere, {empty}")
    return m


def _bdia_replay_state(entry: dict, states_down: list, total: int, change: Optional[str]) -> Optional[tuple]:
    """(pair state z_{T-1} or None, gamma, grid, space, trajectory down or None) for a BDIA record, None for every
    other method. Unchanged samples replay from the stored pair (settling on the stored trajectory where they meet it
    up to round-off); changed ones (variations) start with one plain step, as BDIA's sampler does from noise."""
    if entry.get("method") != BDIA:
        return None
    params = entry.get("params") or {}
    gamma = params.get("gamma")
    if gamma is None or len(states_down) != total + 1:
        raise ValueError("inverted_latent: this BDIA inversion's record lacks its gamma or its stored trajectory (the "
                         "pair state z_{T-1}); BDIA cannot be replayed without them and the plain step would not "
                         "reconstruct. Connect the BDIA Invert node's LATENT directly")
    if change is not None:
        warn("Inverted Latent Sampler: BDIA's pair state z_{T-1} belongs to the noise that was inverted, not to these "
             "changed samples, so the BDIA replay starts with one plain step from them (a generation)")
        return None, float(gamma), None, params.get("space", "sigma"), None
    return states_down[1], float(gamma), params.get("grid"), params.get("space", "sigma"), states_down


def run_replay(model, positive, negative, cfg: float, latent: dict, *, source_positive=None,
               correction_strength: float = 0.0, correction_start_step: int = 0, correction_end_step: int = -1,
               mask: Optional[torch.Tensor] = None) -> dict:
    samples, entry = read_inverted(latent, "inverted_latent")
    check_latent(model, latent, "inverted_latent")
    check_conditioning(positive, samples.shape[0], "positive")
    check_conditioning(negative, samples.shape[0], "negative")
    ms = model.get_model_object("model_sampling")
    kind = model_kind(ms)
    if entry.get("model_kind") and entry["model_kind"] != kind:
        raise ValueError(f"model: this latent was inverted with a {entry['model_kind']} model but this is a "
                         f"{kind} model; replay with the model it was inverted with")
    schedule = entry["sigmas"]
    check_sampling(ms, schedule, entry.get("model_signature"), "model", "replay")
    check_patches(model, entry.get("model_signature"), "model", "replay")
    total = len(schedule) - 1
    strength = float(correction_strength)
    weights = step_weights(total, strength, int(correction_start_step), int(correction_end_step))
    states_down = list(reversed(entry.get("states") or []))
    mask_input = mask if mask is not None else latent.get("noise_mask", entry.get("noise_mask"))
    if mask_input is not None and (getattr(model, "model_options", None) or {}).get("denoise_mask_function"):
        warn("model: its denoise_mask_function (Differential Diffusion) is not used: the Inverted Latent Sampler pins "
             "the region outside the mask to the stored trajectory at every step with the mask as given (a soft mask "
             "blends by its value)")
    needs_states = any(weights) or mask_input is not None
    if needs_states and len(states_down) != total + 1:
        raise ValueError("inverted_latent: source correction and masked edits need the stored trajectory, which this "
                         "latent lacks; connect an inversion node's output directly")
    change = samples_change(samples, entry)
    if change is not None:
        uses = [what for what, used in (("source correction", any(weights)), ("the mask", mask_input is not None))
                if used]
        if uses:
            raise ValueError(
                f"inverted_latent: its samples are no longer the noise that was inverted ({change}: a node between "
                f"the inversion and this sampler changed them). {' and '.join(uses).capitalize()} "
                f"{'use' if len(uses) > 1 else 'uses'} the stored trajectory of the original noise, which does not "
                "belong to these samples, so the result would be wrong. Connect the inversion node's LATENT directly, or set correction_strength to 0 "
                "and disconnect the mask to replay the changed noise without them")
        warn(f"Inverted Latent Sampler: inverted_latent's samples are no longer the noise that was inverted "
             f"({change}); replaying them on the stored schedule anyway (no reconstruction: fine for variations, "
             "otherwise connect the inversion node's LATENT directly)")
    bdia = _bdia_replay_state(entry, states_down, total, change)     # BDIA records replay with the BDIA step
    start = samples
    if change is None and isinstance(entry.get("top_float32"), torch.Tensor):
        start = entry["top_float32"].to(device=samples.device)     # not the half-precision copy of it
    offsets = None
    if any(weights):
        if source_positive is None:
            raise ValueError(
                "source_positive: source correction (correction_strength > 0) computes its offsets from the prompt "
                "the image was inverted with; connect that conditioning to source_positive (to reconstruct with the "
                "source prompt itself, connect it to both positive and source_positive), or set "
                "correction_strength to 0")
        check_conditioning(source_positive, samples.shape[0], "source_positive")
        check_source_positive(entry.get("guidance"), source_positive, positive)
        offset_sampler = _OffsetSampler(states_down, weights, bdia)
        engine = edit_engine_of(model)      # the offsets are the source prompt's own, never an edited prediction
        with engine.offsets_pass() if engine is not None else contextlib.nullcontext():
            _guide(model, source_positive, negative, cfg, start, offset_sampler, schedule)
        offsets = offset_sampler.offsets
    m = _mask_for(mask_input, samples, "mask" if mask is not None else "inverted_latent noise_mask")
    # full source correction reconstructs the source prompt at any cfg, and so does a mask of 0 everywhere (pinned)
    if not all(w == 1.0 for w in weights) and not (m is not None and float(m.max()) == 0.0):
        check_replay_cfg(entry.get("guidance"), positive, negative, cfg, "cfg", model)
        check_model_inputs(entry.get("guidance"), _replay_conds(positive, negative, float(cfg), source_positive
                                                                if any(weights) else None), "replay")
    sampler = ReplaySampler(offsets, weights, m, states_down if m is not None else None, checked=True, bdia=bdia)
    out_samples = _guide(model, positive, negative, cfg, start, sampler, schedule)
    out = {k: v for k, v in latent.items() if k not in ("samples", LATENT_KEY, "noise_mask")}
    out["samples"] = out_samples.to(samples.dtype).cpu()
    return out
