"""What a model was patched with, recorded at inversion and compared at replay: the model sampling (sigma to timestep),
weight patches and their values, cfg / block / attention / wrapper / object patches and the settings they were made
with, the edit engine's own patches, and output caches that would replay other predictions. A replay whose model
differs is warned (or refused where the result would be silently wrong), naming what changed."""
from __future__ import annotations

import dis
import functools
import inspect
import math
from typing import Any, Optional

import torch

from .host_compat import unsupported_host, warn
from ..inversion_core.fingerprint import fingerprint, matches


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
    time) records; a warning when the timesteps it feeds the network at the schedule's levels differ (a zsnr /
    sigma-table patch: the user may mean it), naming its σ_max where that differs too. Another σ range alone is not
    warned: where every level maps to the timestep it had, the network sees what it saw (ModelSamplingContinuousEDM
    with sigma_max 80 on the replay and 14.6 on the inversion replays bit for bit; it was warned)."""
    if not signature:
        return
    now = sampling_signature(ms, schedule)
    if now["classes"] != signature.get("classes"):
        raise ValueError(
            f"{name}: this latent was inverted with model sampling {'/'.join(signature.get('classes') or ['?'])} but "
            f"this model samples with {'/'.join(now['classes'])} (a model sampling patch on one of them: "
            "ModelSamplingDiscrete x0 / lcm / v_prediction, ModelSamplingContinuousEDM / V ..., or another model): "
            "its output or the network's noise levels mean something else there, so the "
            f"{action} would not start from the inversion. Use the model (and model_sampling patch) it was inverted "
            "with")
    old, new = signature.get("timesteps") or [], now["timesteps"]
    differ = [i for i, (a, b) in enumerate(zip(new, old)) if abs(a - b) > 1e-3 + 1e-4 * abs(b)]
    if len(old) != len(new) or not differ:
        return
    inverted_max = signature.get("sigma_max")
    if inverted_max and not math.isclose(now["sigma_max"], float(inverted_max), rel_tol=1e-3):
        warn(f"{name}: its noise schedule tops out at sigma {now['sigma_max']:.4g}, the model this latent was "
             f"inverted with at {float(inverted_max):.4g} (a different model or model_sampling patch); the stored "
             f"schedule then means other noise levels and the {action} will not reconstruct the image")
        return
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


# model_options hooks that see the whole batch's predictions at once: a host cfg function may mix batch items (the
# host's PerpNeg projects with a sum over the whole batch), so a sub-batch would be a different equation; upstream's
# calc_cond_batch function (SkipLayerGuidanceDiTSimple) replaces the whole batch's model call
BATCH_HOOKS = ("sampler_cfg_function", "sampler_post_cfg_function", "sampler_pre_cfg_function",
               "sampler_calc_cond_batch_function")


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
