"""Inversion Edit Engine: a MODEL patch that runs a source branch pinned to the stored inversion trajectory next to
the edit branch and lets the edit borrow the source's attention (PnP, MasaCtrl, Prompt-to-Prompt, KV masks).

Only the host's ModelPatcher API is used: a model function wrapper (``set_model_unet_function_wrapper``) adds the
source branch — the stored x*_k at the current σ with the source prompt — either concatenated to the edit batch
("batched") or as a second model call before it ("cached"); attention replace patches on every transformer block
(``set_model_attn1_replace`` / ``set_model_attn2_replace``) and an ``output_block_patch`` read the source's features
and inject them; the wrapper tells them the step and branch layout through ``transformer_options``. Any sampler
that evaluates the model on the stored schedule (Inverted Latent Sampler, Inverted Replay SAMPLER +
SamplerCustomAdvanced) and any inversion method's LATENT work unchanged. The math is in inversion_core/edit.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import time
from typing import Optional

import torch

import comfy.model_patcher
import comfy.samplers

from ..inversion_core.edit import (MODES, concat_tokens, find_step, inject_self_attention, p2p_cross_attention,
                                   repeat_chunks, resolve_settings, token_mask_for_layer, token_period)
from ..inversion_core.edit.attention import reweight_columns
from ..inversion_core.edit.select import MODE_HELP, EditSettings, layer_name
from ..inversion_core.record import describe_change
from ..inversion_core.solvers.bdia import METHOD as BDIA
from .bridge import _mask_for, check_conditioning, model_family, read_inverted
from .common import CATEGORY
from .guidance import check_model_inputs, is_inversion_prompt
from .host_compat import model_kind, unsupported_host, warn
from .patch_checks import check_patches, check_sampling, edit_engine_of, engine_slots, raw_patch_signature

KEY = "inversion_edit"          # our entry in transformer_options
SOURCE_BRANCHES = ("batched", "cached")
START_TOLERANCE = 1e-3   # relative difference between the sampler's first latent and the engine's inverted latent
_HOOKS = ("set_model_unet_function_wrapper", "set_model_attn1_replace", "set_model_attn2_replace",
          "set_model_output_block_patch")


def _host_attention():
    import comfy.ldm.modules.attention as attention

    return attention


def _options_kwargs(attention_fn, options: Optional[dict]) -> dict:
    """``transformer_options=options`` where the host's attention function takes it (upstream ComfyUI: it carries an
    ``optimized_attention_override`` another node may have set, e.g. an attention kernel), else nothing (the PyPI
    fork's functions have no such parameter)."""
    return {"transformer_options": options} if options and _takes_options(attention_fn) else {}


@functools.lru_cache(maxsize=32)
def _takes_options(attention_fn) -> bool:
    try:
        params = inspect.signature(attention_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "transformer_options" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _tensor_list(val) -> bool:
    return isinstance(val, (list, tuple)) and bool(val) and all(isinstance(v, torch.Tensor) for v in val)


def _convert_cond(cond):
    try:
        from comfy.sampler_helpers import convert_cond
    except ImportError:  # pragma: no cover - older hosts kept it in comfy.sample
        from comfy.sample import convert_cond
    return convert_cond(cond)


def unet_layers(diffusion_model) -> list:
    """Every transformer block of a host UNet as (kind, block id, index within the block) whose attn1 is a
    self-attention (blocks built with ``disable_self_attn``, e.g. the SD x4 upscaler's, attend to the text there: the
    engine leaves them alone)."""
    attention = _host_attention()
    out = []
    groups = (("input", getattr(diffusion_model, "input_blocks", [])),
              ("middle", [getattr(diffusion_model, "middle_block", [])]),
              ("output", getattr(diffusion_model, "output_blocks", [])))
    for kind, blocks in groups:
        for block_id, block in enumerate(blocks):
            for sub in (block if isinstance(block, torch.nn.Sequential) else [block]):
                if isinstance(sub, attention.SpatialTransformer):
                    out.extend((kind, block_id, t) for t, blk in enumerate(sub.transformer_blocks)
                               if not _host_flag(blk, "disable_self_attn"))
    return out


def _host_flag(block, name: str) -> bool:
    """A flag every host block of its kind carries (BasicTransformerBlock.disable_self_attn, Flux's
    DoubleStreamBlock.flipped_img_txt): read strictly, as a missing one would pass for False and let the engine
    inject where it must not (a text-reading attn1, a flipped token order)."""
    if not hasattr(block, name):
        raise RuntimeError(f"Inversion Edit Engine: this ComfyUI's {type(block).__name__} has no {name}, which tells "
                           f"the engine which layers it may patch. {unsupported_host('the edit engine')}")
    return bool(getattr(block, name))


def _mmdit_x(joint_block) -> bool:
    """Whether an MMDiT joint block is an MMDiT-X block (SD3.5 medium's extra image self-attention). The PyPI fork's
    blocks predate MMDiT-X (neither the flag nor pre_attention_x); a block with pre_attention_x but no flag is a host
    that renamed it, where the engine would silently drop the extra attention."""
    xb = joint_block.x_block
    if not hasattr(xb, "x_block_self_attn") and not hasattr(xb, "pre_attention_x"):
        return False
    return _host_flag(xb, "x_block_self_attn")


def dit_layers(diffusion_model) -> list:
    """The joint blocks of a host MMDiT (SD3) as ("joint", i, 0); the double and single stream blocks of a host Flux
    as ("double", i, 0) and ("single", i, 0)."""
    if hasattr(diffusion_model, "double_blocks") and hasattr(diffusion_model, "single_blocks"):
        return ([("double", i, 0) for i in range(len(diffusion_model.double_blocks))]
                + [("single", i, 0) for i in range(len(diffusion_model.single_blocks))])
    return [("joint", i, 0) for i in range(len(getattr(diffusion_model, "joint_blocks", [])))]


def _is_flux(diffusion_model) -> bool:
    return hasattr(diffusion_model, "double_blocks") and hasattr(diffusion_model, "single_blocks")


def _check_flux(model, diffusion_model) -> None:
    """The Flux path needs the host's DiT block replace patches and its attention override; anything else that looks
    like Flux (Chroma, Kontext-style variants with other block signatures, flipped token order) is refused."""
    if type(diffusion_model).__module__ != "comfy.ldm.flux.model" or type(diffusion_model).__name__ != "Flux":
        raise ValueError(f"model: {type(diffusion_model).__module__}.{type(diffusion_model).__name__} has Flux-style "
                         "double/single stream blocks but is not the host's Flux; the engine's dit_kv mode handles "
                         "SD3's MMDiT and Flux (comfy.ldm.flux) only")
    if any(_host_flag(blk, "flipped_img_txt") for blk in diffusion_model.double_blocks):
        raise ValueError("model: this Flux puts the image tokens before the text tokens (flipped_img_txt); the "
                         "engine's dit_kv mode handles the [text, image] order of Flux.1 only")
    if not hasattr(model, "set_model_patch_replace"):
        raise RuntimeError("Inversion Edit Engine: this ComfyUI's ModelPatcher lacks set_model_patch_replace (needed "
                           "for Flux blocks)")
    if not hasattr(_host_attention(), "wrap_attn"):
        raise RuntimeError("Inversion Edit Engine: this ComfyUI's attention has no optimized_attention_override "
                           "(comfy.ldm.modules.attention.wrap_attn); the engine's Flux path needs a newer ComfyUI")


class _JointBlockWithInjection(torch.nn.Module):
    """Stands in for one MMDiT JointBlock through the patcher's ``add_object_patch``: the same ``context_block`` /
    ``x_block`` submodules (so weight keys and LoRA patches are unchanged), forward through the engine."""

    def __init__(self, block, engine: "EditEngine", layer: tuple):
        super().__init__()
        self.context_block, self.x_block = block.context_block, block.x_block
        object.__setattr__(self, "_original", block)
        object.__setattr__(self, "_engine", engine)
        self._layer = layer

    def forward(self, context, x, c=None, **kwargs):
        return self._engine.joint_block(self._original, self._layer, context, x, c, **kwargs)


class _FluxBlockPatch:
    """A Flux block replace patch (``patches_replace["dit"][("double_block"|"single_block", i)]``) for one layer."""

    def __init__(self, engine: "EditEngine", layer: tuple):
        self.engine, self.layer = engine, layer

    def __call__(self, args: dict, extra: dict) -> dict:
        return self.engine.flux_block(self.layer, args, extra)


class _Context:
    """What the wrapper tells the patches for one model call (lives in transformer_options[KEY])."""

    __slots__ = ("step", "phase", "n", "b", "cond_or_uncond", "hw", "tokens")

    def __init__(self, step: int, phase: str, n: int, b: int, cond_or_uncond: list, hw: tuple = (),
                 tokens: tuple = (None, None)):
        self.step, self.phase, self.n, self.b, self.cond_or_uncond = step, phase, n, b, list(cond_or_uncond)
        self.hw = tuple(hw)      # the latent's spatial size (Flux: how many image tokens follow the text)
        self.tokens = tuple(tokens)   # (source, edit) prompt lengths as encoded (P2P only; before any repeat)



def _call_site(extra_options: dict):
    """(host attention module, heads, precision, engine context or None) of an attention replace call."""
    ctx: Optional[_Context] = extra_options.get(KEY)
    return _host_attention(), extra_options["n_heads"], extra_options.get("attn_precision"), ctx


class _AttnPatch:
    """An attention replace patch for one UNet layer (``set_model_attn1_replace`` / ``attn2``). It knows its layer
    itself: the host found it under that layer's key, so nothing depends on how the host names the block in the
    call's options."""

    def __init__(self, engine: "EditEngine", which: str, layer: tuple):
        self.engine, self.which, self.layer = engine, which, layer

    def __call__(self, q, k, v, extra_options):
        return getattr(self.engine, self.which)(q, k, v, extra_options, self.layer)


class EditEngine:
    """The source branch and the injection, for one inverted latent. ``stats`` counts what the source branch cost."""

    is_inversion_edit_engine = True     # patch_checks.patch_signature: a MODEL with an engine checks its own inputs
    built_signature: dict = {}          # raw_patch_signature of the MODEL it was installed on (set there)
    built_slots: frozenset = frozenset()  # where its own patches sit on that MODEL (bridge.engine_slots)

    def __init__(self, settings: EditSettings, schedule: list, states_down: list, source_cond, mask, branch: str,
                 patch_size: int = 1, inner_wrapper=None, inner_attention: Optional[dict] = None):
        self.settings, self.schedule, self.states_down = settings, schedule, states_down
        # patches the MODEL already had where the engine installs its own: called in place of the host's default
        # (a model function wrapper around apply_model; attention replaces, keyed ("attn1" | "attn2", layer)), so
        # another node's patch (IP-Adapter, an attention kernel, …) keeps working under the engine
        self.inner_wrapper = inner_wrapper
        self.inner_attention = dict(inner_attention or {})
        self.patch_size = int(patch_size)
        self.source_cond, self.mask, self.branch = source_cond, mask, branch
        self.cache: dict = {}
        self.current: Optional[_Context] = None     # the DiT blocks' channel (the host's MMDiT passes no options)
        self._src_conds: dict = {}
        self._flux_text: dict = {}                  # per model call: the text token count the double blocks saw
        self.stats = {"calls": 0, "source_calls": 0, "seconds": 0.0}
        self._last_step: Optional[int] = None        # the step of the previous model call (a lower one: a new run)
        self._seen: set = set()                      # the cond/uncond chunk sets called at that step so far
        self._first_step: Optional[int] = None       # the step the current run started at
        self._bypass = False                         # offsets_pass(): the MODEL as it was before the engine
        self._reached: set = set()                   # what saw the engine's context in this model call (_check_reached)

    def __deepcopy__(self, memo):
        """The engine itself: a clone of its MODEL shares it. The PyPI fork's ModelPatcher.clone deep-copies
        model_options, which held the engine's only copy of the trajectory in every clone (RescaleCFG, a LoRA loader
        after the engine) and split it from the patches that are not in model_options: SD3's joint blocks (object
        patches) kept reading the original engine, which the copied wrapper never told the step, and every SD3 replay
        through a clone stopped with an error."""
        memo[id(self)] = self
        return self

    # ------------------------------------------------------------------------------------------ model wrapper
    @contextlib.contextmanager
    def offsets_pass(self):
        """Source correction's offsets pass (bridge.run_replay). The offsets are the source prompt's own predictions
        along the stored trajectory; there the source branch equals the evaluated one and every injection is a
        no-op, except P2P re-weighting: it would change those predictions, and the correction would cancel it. The
        engine steps aside for it (the no-op injections still run, so the offsets round exactly like the edit)."""
        self._bypass = self.settings.reweight != 1.0
        try:
            yield self
        finally:
            self._bypass = False

    def __call__(self, apply_model, args: dict):
        x, t, c, cou = args["input"], args["timestep"], args["c"], list(args["cond_or_uncond"])
        if self._bypass:
            return self._apply(apply_model, x, t, c, cou)
        sigma = float(t.flatten()[0])
        k = find_step(sigma, self.schedule)
        if k is None:
            raise ValueError(
                f"Inversion Edit Engine: the sampler evaluated the model at sigma {sigma:.6g}, which is not on the "
                f"inverted latent's schedule ({', '.join(f'{s:.4g}' for s in self.schedule)}). Replay with the "
                "Inverted Latent Sampler (or the Inverted Replay SAMPLER with the sigmas the inversion returned); "
                "other samplers and schedules cannot be pinned to the stored trajectory")
        self.stats["calls"] += 1
        # a new run starts below the last step (a BDIA replay starts at k = 1), or repeats the chunks of the step a run
        # started at (a one-step replay run again). The host evaluates cond and uncond in separate calls of one step
        # when they do not fit in memory together or cannot be batched (token counts), and the entries of a combined
        # prompt too (ConditioningCombine of prompts whose token counts do not batch: two calls of chunks [0] at
        # cfg 1): those calls of one step are not a new run (their latent is the edited one, which the start check
        # would take for a foreign latent). At the start step the latent is the inverted one, so the check passes
        chunks_seen = tuple(cou)
        repeat = k == self._last_step and chunks_seen in self._seen
        if self._last_step is None or k < self._last_step or (repeat and k == self._first_step):
            self._check_start(x, len(cou), k)
            self._seen, self._first_step = set(), k
        elif k > self._last_step + 1 and self._start_change(x, len(cou), k, unpaired="its shape") is None:
            self._seen, self._first_step = set(), k      # a new run from a lower level (its latent is the stored one)
        elif k > self._last_step + 1:
            raise ValueError(
                f"Inversion Edit Engine: the sampler went from sigma {self.schedule[self._last_step]:.6g} to "
                f"{sigma:.6g}, skipping {k - self._last_step - 1} level(s) of the inverted latent's schedule "
                f"({', '.join(f'{s:.4g}' for s in self.schedule)}): a schedule with fewer steps (or another scheduler "
                "that shares some levels) replays another trajectory than the stored one, and the source branch "
                "would steer it with the wrong steps. Replay with the Inverted Latent Sampler, or give the sampler "
                "the sigmas the inversion returned")
        elif k > self._last_step:
            self._seen = set()
        self._seen.add(chunks_seen)
        self._last_step = k
        if not self.settings.any_step(k):
            return self._apply(apply_model, x, t, c, cou)
        start = time.perf_counter()
        chunks = len(cou)
        n = x.shape[0]
        b = n // chunks
        state = self.states_down[k]
        if not n % chunks and b != state.shape[0] and tuple(state.shape[1:]) == tuple(x.shape[1:]):
            # the whole latent's items, but not the inversion's batch: its source branch has no rows for them
            raise ValueError(
                f"Inversion Edit Engine: the sampler runs {b} latent item(s) but the engine's inverted_latent has "
                f"{state.shape[0]}: the engine's source branch follows the whole inverted batch, so a replay of some "
                "of its items (LatentFromBatch, RepeatLatentBatch, LatentBatch) cannot be paired with it. Replay the "
                "inversion's whole LATENT with the engine and pick the items after the sampler (LatentFromBatch on "
                "its output), or invert the picked image alone")
        if n % chunks or state.shape[0] != b or tuple(state.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"Inversion Edit Engine: the model is evaluated on {n} items of shape {tuple(x.shape[1:])} "
                f"({chunks} cond/uncond chunks) but the inverted latent has {state.shape[0]} of shape "
                f"{tuple(state.shape[1:])}; area / regional conditioning cannot be paired with the source branch")
        x_src = repeat_chunks(state.to(device=x.device, dtype=x.dtype), chunks)
        c_src = self._source_c(apply_model, c, cou, b, x)
        # ControlNet residuals are the edit's alone (_source_c), for a batch of the edit's rows
        branch = "cached" if c.get("control") is not None else self.branch
        p2p = self.settings.swap or self.settings.reweight != 1.0
        tokens = self._prompt_lengths(c_src, c, cou) if p2p else (None, None)
        self.stats["source_calls"] += 1
        try:
            if branch == "batched":
                c_all = {}
                for key, val in c.items():
                    if key == "transformer_options":
                        continue
                    if isinstance(val, torch.Tensor):
                        c_all[key] = concat_tokens([c_src[key], val])
                    elif _tensor_list(val):     # Flux Kontext's reference latents: one batch per reference
                        c_all[key] = [concat_tokens([a, b]) for a, b in zip(c_src[key], val)]
                    else:
                        c_all[key] = val
                opts = dict(c.get("transformer_options", {}))
                opts["cond_or_uncond"] = cou + cou
                opts[KEY] = _Context(k, "batched", n, b, cou, x.shape[2:], tokens)
                c_all["transformer_options"] = opts
                self.current = opts[KEY]
                self._reached = set()
                out = self._apply(apply_model, torch.cat([x_src, x]), torch.cat([t, t]), c_all, cou + cou)
                self._check_reached(k)
                return out[n:]
            opts = dict(c.get("transformer_options", {}))
            opts[KEY] = self.current = _Context(k, "capture", n, b, cou, x.shape[2:], tokens)
            self._reached = set()
            self._apply(apply_model, x_src, t, dict(c_src, transformer_options=opts), cou)
            opts = dict(c.get("transformer_options", {}))
            opts[KEY] = self.current = _Context(k, "inject", n, b, cou, x.shape[2:], tokens)
            out = self._apply(apply_model, x, t, dict(c, transformer_options=opts), cou)
            self._check_reached(k)
            return out
        finally:
            self.current = None
            self.cache.clear()
            self._flux_text.clear()
            self.stats["seconds"] += time.perf_counter() - start

    def _apply(self, apply_model, x: torch.Tensor, t: torch.Tensor, c: dict, cou: list):
        """apply_model(x, t, **c), through the model function wrapper the MODEL had before the engine, if any."""
        if self.inner_wrapper is None:
            return apply_model(x, t, **c)
        return self.inner_wrapper(apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": list(cou)})

    def _check_reached(self, k: int) -> None:
        """An error when a model call at step ``k``, where the engine injects, ran without the engine's patches
        seeing its context: the host no longer calls them (or no longer hands them the entry the wrapper put in
        transformer_options), and the edit would come out as the plain replay, or with only some of its injections
        (tiny SD1: the PnP edit lost its attention injection without a word)."""
        s = self.settings
        due = {"attention": bool((s.self_steps and s.self_layers and s.self_steps[k])
                                 or (s.mask_layers and s.mask_steps and s.mask_steps[k])),
               "cross-attention": bool(s.cross_steps and s.cross_steps[k]),
               "residual": bool(s.residual_block is not None and s.residual_steps and s.residual_steps[k])}
        missing = [what for what, needed in due.items() if needed and what not in self._reached]
        if missing:
            raise RuntimeError(
                f"Inversion Edit Engine: at step {k} the host ran the model without calling the engine's "
                f"{' / '.join(missing)} patches with the engine's context (transformer_options[{KEY!r}], which the "
                "model function wrapper sets): this ComfyUI calls model patches differently, so the edit would "
                f"silently lose its injection. {unsupported_host('the edit engine')}")

    def _attend(self, which: str, layer, q, k, v, extra_options: dict):
        """The attention of a replaced layer: the MODEL's earlier replace patch for it, else the host's kernel.
        In a batched call the earlier patch gets the source's rows and the edit's rows in two calls, each with its
        own cond_or_uncond, as without the engine: a patch that reads the chunks (Self-Attention Guidance keeps the
        uncond's attention map) took the source's uncond for the edit's, and batched differed from cached."""
        inner = self.inner_attention.get((which, layer))
        if inner is not None:
            ctx: Optional[_Context] = extra_options.get(KEY)
            n = ctx.n if ctx is not None else 0
            if ctx is None or ctx.phase != "batched" or not q.shape[0] == k.shape[0] == v.shape[0] == 2 * n:
                return inner(q, k, v, extra_options)
            opts = dict(extra_options, cond_or_uncond=list(ctx.cond_or_uncond))
            for name in ("original_shape", "activations_shape"):   # [batch, ...] of the block's input
                shape = opts.get(name)
                if isinstance(shape, (list, tuple)) and shape and shape[0] == 2 * n:
                    opts[name] = [n] + list(shape[1:])
            return torch.cat([inner(q[:n], k[:n], v[:n], opts), inner(q[n:], k[n:], v[n:], opts)])
        attention, heads, precision, _ = _call_site(extra_options)
        return attention.optimized_attention(q, k, v, heads, attn_precision=precision,
                                             **_options_kwargs(attention.optimized_attention, extra_options))

    def _check_start(self, x: torch.Tensor, chunks: int, k: int) -> None:
        """The sampler must start from the inverted latent the engine was built from: the source branch follows that
        latent's stored trajectory, so from any other start (another image's inversion, a KSampler's noise) the edit
        would be steered by the wrong image without a sign of it. ``k``: the step of the run's first model call
        (0; 1 for a BDIA replay, whose first latent z_{T-1} is the stored pair state)."""
        change = self._start_change(x, chunks, k)
        if change is not None:
            raise ValueError(
                "Inversion Edit Engine: the sampler starts from a latent that is not the inverted latent this "
                f"engine was built from ({change}). Connect the same inverted LATENT to the engine and to the "
                "Inverted Latent Sampler: the engine's source branch follows that latent's stored trajectory and "
                "cannot steer the edit of another latent or of fresh noise")

    def _start_change(self, x: torch.Tensor, chunks: int, k: int, unpaired: Optional[str] = None) -> Optional[str]:
        """How the model's input ``x`` differs from the stored latent at step ``k`` (None: it is that latent).
        ``unpaired``: what to return when the shapes do not pair (None: the caller's shape check names that)."""
        top = self.states_down[k]
        n = x.shape[0]
        if chunks < 1 or n % chunks or n // chunks != top.shape[0] or tuple(x.shape[1:]) != tuple(top.shape[1:]):
            return unpaired
        for chunk in x.chunk(chunks):
            change = describe_change(top, chunk, rtol=START_TOLERANCE)
            if change is not None:
                return change
        return None

    @staticmethod
    def _prompt_lengths(c_src: dict, c: dict, cou: list) -> tuple:
        """(source, edit) prompt lengths in tokens, as the prompts were encoded: the host repeats a prompt to the
        common length of everything batched with it (a longer negative, a prompt over 75 CLIP tokens), so the
        tensors' own lengths do not say which tokens line up (P2P's word swap) or where a token's columns are."""
        out = []
        for d in (c_src, c):
            val = d.get("c_crossattn")
            if not isinstance(val, torch.Tensor) or val.ndim < 3:
                out.append(None)
                continue
            parts = val.chunk(len(cou))
            cond = [parts[j] for j in range(len(cou)) if cou[j] == 0]
            out.append(token_period(torch.cat(cond) if cond else val))
        return tuple(out)

    def _source_c(self, apply_model, c: dict, cou: list, b: int, x: torch.Tensor) -> dict:
        """The edit's model inputs with the cond chunks' conditioning replaced by the source prompt's (uncond chunks
        are shared: the source and the edit use the same negative)."""
        key = (b, str(x.device), tuple(x.shape[1:]))
        if key not in self._src_conds:
            base = getattr(apply_model, "__self__", None)
            if base is None or not hasattr(base, "extra_conds"):
                raise RuntimeError("Inversion Edit Engine: this host's model function wrapper does not pass the "
                                   "model's apply_model; the host is too old or too new for the engine")
            # latent_image as the guider gives it: an inpainting model's concat input reads it (where no
            # InpaintModelConditioning set one) and fails on None; without a denoise_mask, which the pack's samplers
            # never pass, the host uses only its shape (the blank image and mask of ones), so this sub-batch serves
            conds = comfy.samplers.encode_model_conds(base.extra_conds, _convert_cond(self.source_cond),
                                                      x[:b], x.device, "positive", latent_image=x[:b])
            model_conds = conds[0]["model_conds"]
            self._src_conds[key] = {name: obj.process_cond(batch_size=b, device=x.device, area=None).cond
                                    for name, obj in model_conds.items()}
        src = self._src_conds[key]
        out = {}
        chunks = len(cou)

        def swap(val: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            parts = val.chunk(chunks)
            return concat_tokens([source.to(device=val.device, dtype=val.dtype) if cou[j] == 0 else parts[j]
                                  for j in range(chunks)])

        for name, val in c.items():
            if name == "control":
                # the edit's ControlNet residuals, computed by the host for the edit's latent and prompt: the source
                # branch is the inversion's own evaluation (its conditioning carries no ControlNet: build_engine_patch).
                # Passed on, they also moved the source's features (18 % of a layer's queries, tiny SD1) and the
                # host's UNet pops them from their lists, so the edit's call after the source's had none: the edit
                # lost its ControlNet inside the window (its effect fell from 0.78 to 0.04-0.06 RMS)
                continue
            if name == "transformer_options" or name not in src:
                out[name] = val
            elif isinstance(val, torch.Tensor):
                out[name] = swap(val, src[name])
            elif _tensor_list(val) and _tensor_list(src[name]) and len(val) == len(src[name]):
                # a list of tensors (upstream's CONDList: reference latents), each batched like a tensor input
                out[name] = [swap(v, s) for v, s in zip(val, src[name])]
            else:
                out[name] = val
        return out

    # ------------------------------------------------------------------------------------------ patches
    def _split(self, ctx: _Context, layer: tuple, what: str, *tensors):
        """(source tensors, edit tensors) for this call, capturing or reading the cache as the phase says."""
        if ctx.phase == "batched":
            return [t[:ctx.n] for t in tensors], [t[ctx.n:] for t in tensors]
        if ctx.phase == "capture":
            self.cache[(what, layer)] = tensors
            return None, None
        src = self.cache.get((what, layer))
        if src is None:
            raise RuntimeError(f"Inversion Edit Engine: no source features captured for {what} {layer}")
        return list(src), list(tensors)

    @staticmethod
    def _check_rows(ctx: _Context, layer: tuple, which: str, q, k, v) -> None:
        """An error unless q, k and v hold the call's rows (source then edit when batched), and self-attention's one
        token count: another node's attn1 patch may regroup them (HyperTile tiles the queries into more rows, ToMe
        merges query tokens, reference-only appends keys), and the source's features would be paired with the wrong
        rows or tokens of the edit (HyperTile: a source tile's queries for the whole edit batch, without a word)."""
        rows = 2 * ctx.n if ctx.phase == "batched" else ctx.n
        same_tokens = which != "attn1" or q.shape[1] == k.shape[1] == v.shape[1]
        if q.shape[0] == k.shape[0] == v.shape[0] == rows and same_tokens:
            return
        shapes = ", ".join(f"{name} {tuple(t.shape[:2])}" for name, t in (("q", q), ("k", k), ("v", v)))
        kind = "self" if which == "attn1" else "cross"
        raise RuntimeError(
            f"Inversion Edit Engine: {kind}-attention of layer {layer_name(layer)} came with {shapes} as [rows, "
            f"tokens] where the engine pairs {rows} rows{' of one token count' if which == 'attn1' else ''}: another "
            f"node's {which}_patch on this MODEL (HyperTile, ToMe, reference-only ...) regroups the rows or tokens, so "
            "the source's features cannot be matched to the edit's. Remove that patch from the MODEL for the edit "
            "(or keep the engine's window and layers away from the layers it changes)")

    def attn1(self, q, k, v, extra_options, layer: tuple):
        _, _, _, ctx = _call_site(extra_options)
        s = self.settings
        if ctx is None:
            return self._attend("attn1", layer, q, k, v, extra_options)
        self._reached.add("attention")
        inject = s.self_steps[ctx.step] and layer in s.self_layers
        masked = self.mask is not None and s.mask_steps[ctx.step] and layer in s.mask_layers
        if not (inject or masked):
            return self._attend("attn1", layer, q, k, v, extra_options)
        self._check_rows(ctx, layer, "attn1", q, k, v)
        src, edit = self._split(ctx, layer, "attn1", q, k, v)
        if src is None:   # capture phase: the source runs unchanged
            return self._attend("attn1", layer, q, k, v, extra_options)
        keep = token_mask_for_layer(self.mask.to(q.device), q.shape[1], edit[0].shape[0]) if masked else None
        qe, ke, ve = inject_self_attention(*edit, *src, use_q=inject and s.use_q, use_k=inject and s.use_k,
                                           use_v=inject and s.use_v, strength=s.strength, keep=keep)
        if ctx.phase == "batched":
            qe, ke, ve = torch.cat([src[0], qe]), torch.cat([src[1], ke]), torch.cat([src[2], ve])
        return self._attend("attn1", layer, qe, ke, ve, extra_options)

    def attn2(self, q, k, v, extra_options, layer: tuple):
        _, heads, _, ctx = _call_site(extra_options)
        out = self._attend("attn2", layer, q, k, v, extra_options)
        if ctx is None or not self.settings.cross_steps or not self.settings.cross_steps[ctx.step]:
            return out
        self._reached.add("cross-attention")
        self._check_rows(ctx, layer, "attn2", q, k, v)
        src, edit = self._split(ctx, layer, "attn2", q, k)
        if src is None:
            return out
        s = self.settings
        rows = torch.tensor([ctx.cond_or_uncond[i // ctx.b] == 0 for i in range(ctx.n)])
        if not rows.any():
            return out
        idx = rows.nonzero().flatten().to(q.device)
        v_e = v[ctx.n:] if ctx.phase == "batched" else v
        cols = None
        if s.reweight != 1.0:
            length = k.shape[1]
            period = ctx.tokens[1] if ctx.tokens[1] and length % ctx.tokens[1] == 0 else length
            cols = reweight_columns(length, s.tokens, period) if s.tokens else torch.ones(length, dtype=torch.bool)
        if s.swap and ctx.tokens[0] != ctx.tokens[1]:
            raise ValueError("Prompt-to-Prompt word swap needs source and edit prompts of the same token length "
                             f"(source {ctx.tokens[0]}, edit {ctx.tokens[1]} tokens)")
        p2p = p2p_cross_attention(edit[0][idx], edit[1][idx], v_e[idx], src[0][idx], src[1][idx], heads,
                                  swap_strength=s.strength if s.swap else 0.0, reweight=s.reweight, columns=cols)
        offset = ctx.n if ctx.phase == "batched" else 0
        out = out.clone()
        out[idx + offset] = p2p.to(out.dtype)
        return out

    def joint_block(self, block, layer: tuple, context, x, c, **kwargs):
        """One MMDiT joint block with the source's keys/values in the image tokens (the block's own pre/post
        attention, the host's attention function; text tokens untouched)."""
        ctx, s = self.current, self.settings
        if ctx is not None:
            self._reached.add("attention")     # the host called the object patch (an MMDiT block in its place)
        inject = ctx is not None and s.self_steps[ctx.step] and layer in s.self_layers
        masked = ctx is not None and self.mask is not None and s.mask_steps[ctx.step] and layer in s.mask_layers
        if not (inject or masked):
            return block(context, x, c=c, **kwargs)
        attention = _host_attention()
        cb, xb = block.context_block, block.x_block
        c_qkv, c_rest = cb.pre_attention(context, c)
        x_qkv, x_rest = xb.pre_attention(x, c)
        x_qkv = tuple(t.reshape(t.shape[0], t.shape[1], -1) for t in x_qkv)   # v comes as [B, L, heads, dim]
        c_qkv = tuple(t.reshape(t.shape[0], t.shape[1], -1) for t in c_qkv)
        src, edit = self._split(ctx, layer, "joint", *x_qkv)
        if src is not None:
            keep = token_mask_for_layer(self.mask.to(x.device), x.shape[1], edit[0].shape[0]) if masked else None
            qe, ke, ve = inject_self_attention(*edit, *src, use_q=inject and s.use_q, use_k=inject and s.use_k,
                                               use_v=inject and s.use_v, strength=s.strength, keep=keep)
            x_qkv = (qe, ke, ve) if ctx.phase == "inject" else tuple(
                torch.cat([a, e]) for a, e in zip(src, (qe, ke, ve)))
        qkv = [torch.cat((c_qkv[i], x_qkv[i]), dim=1) for i in range(3)]
        out = attention.optimized_attention(qkv[0], qkv[1], qkv[2], xb.attn.num_heads, **_options_kwargs(
            attention.optimized_attention, kwargs.get("transformer_options")))
        split = c_qkv[0].shape[1]
        context = None if cb.pre_only else cb.post_attention(out[:, :split], *c_rest)
        return context, xb.post_attention(out[:, split:], *x_rest)

    def flux_block(self, layer: tuple, args: dict, extra: dict) -> dict:
        """One Flux double/single stream block (the host's ``patches_replace["dit"]``): outside the window the host's
        block as is; inside, the host's block with an ``optimized_attention_override`` that puts the source's
        keys/values into the edit's image tokens (the block's own projections, norms, RoPE and attention)."""
        opts = args.get("transformer_options") or {}
        ctx: Optional[_Context] = opts.get(KEY)
        s = self.settings
        # token order [txt, img(, reference latents)]: the single blocks get txt and img concatenated
        text = args["txt"].shape[1] if layer[0] == "double" else None
        if ctx is not None and text is not None:
            self._flux_text[id(ctx)] = text
        inject = ctx is not None and s.self_steps[ctx.step] and layer in s.self_layers
        masked = ctx is not None and self.mask is not None and s.mask_steps[ctx.step] and layer in s.mask_layers
        if not (inject or masked):
            return extra["original_block"](args)
        ps = self.patch_size
        img_tokens = ((ctx.hw[0] + ps // 2) // ps) * ((ctx.hw[1] + ps // 2) // ps)
        prior = opts.get("optimized_attention_override")

        def override(func, q, k, v, heads, *a, **kw):
            if not kw.get("skip_reshape") or q.ndim != 4:
                raise RuntimeError("Inversion Edit Engine: Flux attention was not called with [batch, heads, tokens, "
                                   "dim] tensors; this ComfyUI's Flux is not the one the engine knows")
            total = q.shape[2]
            start = text if text is not None else self._flux_text.get(id(ctx), total - img_tokens)
            end = start + img_tokens
            if end > total:
                raise ValueError(f"Inversion Edit Engine: Flux block {layer_name(layer)} has {total} tokens, fewer "
                                 f"than the {start} text + {img_tokens} image tokens the latent implies")
            q, k, v = self._flux_inject(ctx, layer, inject, masked, q, k, v, start, end)
            self._reached.add("attention")     # the host's Flux called the override: the injection ran
            if prior is not None:
                return prior(func, q, k, v, heads, *a, **kw)
            return func(q, k, v, heads, *a, **kw)

        opts = dict(opts, optimized_attention_override=override)
        return extra["original_block"](dict(args, transformer_options=opts))

    def _flux_inject(self, ctx: _Context, layer: tuple, inject: bool, masked: bool, q, k, v, start: int, end: int):
        """q, k, v [B, heads, tokens, dim] with the image tokens [start, end) of k and v taken from the source."""
        s = self.settings
        b, heads, _, dim = q.shape

        def flat(t):   # the image tokens as [B, tokens, heads * dim]
            return t[:, :, start:end].transpose(1, 2).reshape(b, end - start, heads * dim)

        src, edit = self._split(ctx, layer, "flux", *(flat(t) for t in (q, k, v)))
        if src is None:    # capture phase: the source runs unchanged
            return q, k, v
        keep = token_mask_for_layer(self.mask.to(q.device), end - start, edit[0].shape[0]) if masked else None
        new = inject_self_attention(*edit, *src, use_q=inject and s.use_q, use_k=inject and s.use_k,
                                    use_v=inject and s.use_v, strength=s.strength, keep=keep)
        if ctx.phase == "batched":
            new = [torch.cat([a, e]) for a, e in zip(src, new)]
        out = []
        for t, img in zip((q, k, v), new):
            img = img.to(t.dtype).reshape(b, end - start, heads, dim).transpose(1, 2)
            out.append(torch.cat([t[:, :, :start], img, t[:, :, end:]], dim=2))
        return tuple(out)

    def output_block(self, h, hsp, transformer_options):
        ctx: Optional[_Context] = transformer_options.get(KEY)
        s = self.settings
        block = transformer_options.get("block")
        if ctx is not None:
            if block is None:
                raise RuntimeError("Inversion Edit Engine: the host's output_block_patch call carries no "
                                   "transformer_options['block'] (which output block it is), so the residual "
                                   f"features cannot be injected at their block. {unsupported_host('the edit engine')}")
            self._reached.add("residual")
        if ctx is None or s.residual_block is None or not s.residual_steps[ctx.step] or block is None \
                or block[1] != s.residual_block:
            return h, hsp
        src, edit = self._split(ctx, ("output", block[1], 0), "residual", h)
        if src is None:
            return h, hsp
        mixed = edit[0] + s.strength * (src[0] - edit[0])
        if ctx.phase == "batched":
            mixed = torch.cat([src[0], mixed])
        return mixed, hsp


def build_engine_patch(model, inverted_latent, source_conditioning, mode: str, *, strength: float = 1.0,
                       window_start: float = -1.0, window_end: float = -1.0, layers: str = "auto",
                       residual_features: bool = False, reweight: float = 1.0, tokens: str = "",
                       source_branch: str = "batched", mask: Optional[torch.Tensor] = None):
    """A clone of ``model`` with the engine patched in; returns (patched model, engine)."""
    missing = [h for h in _HOOKS if not hasattr(model, h)]
    if missing:
        raise RuntimeError(f"Inversion Edit Engine: this ComfyUI is too old for the engine: its ModelPatcher lacks "
                           f"{', '.join(missing)}")
    samples, entry = read_inverted(inverted_latent, "inverted_latent")
    check_conditioning(source_conditioning, samples.shape[0], "source_conditioning")
    if len(source_conditioning) != 1:
        raise ValueError("source_conditioning: expected one prompt (the one the image was inverted with), got "
                         f"{len(source_conditioning)} combined entries")
    _check_source_extras(source_conditioning[0][1])
    if source_branch not in SOURCE_BRANCHES:
        raise ValueError(f"source_branch: one of {SOURCE_BRANCHES}, got {source_branch!r}")
    kind = model_kind(model.get_model_object("model_sampling"))
    if entry.get("model_kind") and entry["model_kind"] != kind:
        raise ValueError(f"model: this latent was inverted with a {entry['model_kind']} model but this is a {kind} "
                         "model; edit with the model it was inverted with")
    check_sampling(model.get_model_object("model_sampling"), entry["sigmas"], entry.get("model_signature"), "model",
                   "edit")
    check_patches(model, entry.get("model_signature"), "model", "edit")
    # the source branch is the inversion's own prompt: an inpainting model's concat (or a reference latent) and its
    # hooks must be the inversion's there too, or the branch does not follow the stored trajectory it is pinned to
    check_model_inputs(entry.get("guidance"), {"source_conditioning": (source_conditioning, "positive")},
                       "source branch", "Inversion Edit Engine: ")
    schedule = [float(s) for s in entry["sigmas"].tolist()]
    total = len(schedule) - 1
    states_down = list(reversed(entry.get("states") or []))
    if len(states_down) != total + 1:
        raise ValueError("inverted_latent: the edit engine needs the stored trajectory, which this latent lacks; "
                         "connect an inversion node's output directly")
    diffusion_model = model.model.diffusion_model
    dit = bool(dit_layers(diffusion_model))
    layers_available = dit_layers(diffusion_model) if dit else unet_layers(diffusion_model)
    if not layers_available:
        raise ValueError(f"model: no UNet transformer blocks, MMDiT joint blocks or Flux blocks found in "
                         f"{type(diffusion_model).__module__}.{type(diffusion_model).__name__}; the engine handles SD-style UNets (SD1.x / SD2.x / SDXL, "
                         "the reference model), SD3's MMDiT and (on upstream ComfyUI) Flux")
    flux = dit and _is_flux(diffusion_model)
    if flux:
        _check_flux(model, diffusion_model)
    if dit and not flux and any(_mmdit_x(blk) for blk in diffusion_model.joint_blocks):
        raise ValueError("model: this MMDiT has MMDiT-X blocks (SD3.5 medium's extra image self-attention); the "
                         "engine's dit_kv mode handles SD3 / SD3.5 large joint blocks only")
    if dit and not flux and not hasattr(model, "add_object_patch"):
        raise RuntimeError("Inversion Edit Engine: this ComfyUI's ModelPatcher lacks add_object_patch (needed for "
                           "MMDiT blocks)")
    m = _mask_for(mask, samples, "mask", empty=(
        "so the source's keys / values are kept everywhere; the edit prompt still changes the image (this mask "
        "does not pin the latent: the Inverted Latent Sampler's mask does). LoadImage's MASK of an image without an "
        "alpha channel is all 0: paint a mask, or use InvertMask"))
    settings = resolve_settings(mode, model_family(model), total, layers_available, window_start=window_start,
                                window_end=window_end, layers=layers, strength=strength, residual=residual_features,
                                reweight=reweight, tokens=tokens, masked=m is not None, dit=dit)
    start, end = settings.window
    _warn_ignored_settings(settings, mode, strength, reweight, tokens, m is not None)
    if settings.active_steps:            # a source branch that never runs cannot pin the edit to the wrong prompt
        _check_source_prompt(entry.get("guidance"), source_conditioning)
    if settings.active_steps == 0 and not any(settings.mask_steps):   # mask_steps: the window's
        _warn_empty_window(mode, start, end, window_start, window_end, total)
    elif entry.get("method") == BDIA and settings.any_step(0) and \
            not any(settings.any_step(k) for k in range(1, total)):
        warn(f"Inversion Edit Engine: the window {start:g}-{end:g} holds only step 0 of the inverted latent's "
             f"{total}, and a BDIA replay does not evaluate step 0 (its first latent z_(T-1) is the stored pair "
             "state, the source's own step), so the engine changes nothing: the replay is the plain one. Widen the "
             "window past step 0 or invert with more steps")
    blocks = len(getattr(diffusion_model, "output_blocks", []))
    if settings.residual_block is not None and not dit and settings.residual_block >= blocks:
        warn(f"Inversion Edit Engine: residual_features injects at output block {settings.residual_block} (the "
             f"{model_family(model) or 'default'} preset) but this UNet has {blocks} output blocks, so that part does "
             "nothing; turn residual_features off (the attention injection still works)")
    inner_wrapper, inner_attention = _patches_underneath(model, layers_available, flux, dit, settings)
    engine = EditEngine(settings, schedule, states_down, source_conditioning, m, source_branch,
                        patch_size=getattr(diffusion_model, "patch_size", 1), inner_wrapper=inner_wrapper,
                        inner_attention=inner_attention)
    patched = model.clone()

    def installed():
        _check_installed(patched, engine, layers_available, flux, dit, settings)
        engine.built_signature = raw_patch_signature(patched)   # patch_checks.check_patches: what is added after it
        engine.built_slots = engine_slots(patched, engine)       # patch_checks.check_engine_wrapper: what replaced them
        return patched, engine

    # the patches are installed even for an empty window: outside the window every call takes the host's own path
    # (or the MODEL's earlier patch there)
    patched.set_model_unet_function_wrapper(engine)
    if flux:
        for layer in layers_available:
            patched.set_model_patch_replace(_FluxBlockPatch(engine, layer), "dit", f"{layer[0]}_block", layer[1])
        return installed()
    if dit:
        for layer in layers_available:
            name = f"diffusion_model.joint_blocks.{layer[1]}"
            block = model.get_model_object(name) if hasattr(model, "get_model_object") else \
                diffusion_model.joint_blocks[layer[1]]
            while isinstance(block, _JointBlockWithInjection) and name not in model.object_patches:
                block = block._original      # left in place by another engine's MODEL that is still loaded
            patched.add_object_patch(name, _JointBlockWithInjection(block, engine, layer))
        return installed()
    for layer in layers_available:
        patched.set_model_attn1_replace(_AttnPatch(engine, "attn1", layer), layer[0], layer[1], layer[2])
        if settings.cross_steps:
            patched.set_model_attn2_replace(_AttnPatch(engine, "attn2", layer), layer[0], layer[1], layer[2])
    if settings.residual_block is not None:
        patched.set_model_output_block_patch(engine.output_block)
    return installed()


# what a CONDITIONING entry may carry besides the model inputs built from its prompt (host: get_area_and_mult,
# calc_cond_batch): the engine's source branch evaluates only the latter, so any of these would be dropped unsaid
_SOURCE_EXTRAS = {"control": "a ControlNet / T2I adapter", "gligen": "GLIGEN boxes", "area": "an area",
                  "mask": "a region mask", "hooks": "hooks (scheduled LoRA / patches)"}


def _check_source_extras(extra: dict) -> None:
    """An error when the source conditioning carries what the engine's source branch does not evaluate: it runs the
    model on the stored trajectory with the prompt's own model inputs (text, pooled output, size values, an
    inpainting model's concat), not through the host's conditioning machinery."""
    found = [what for key, what in _SOURCE_EXTRAS.items() if extra.get(key) is not None]
    start, end = extra.get("start_percent", 0.0), extra.get("end_percent", 1.0)
    if (start is not None and float(start) > 0.0) or (end is not None and float(end) < 1.0):
        found.append(f"a step range ({start}-{end})")
    if found:
        raise ValueError(
            f"source_conditioning: it carries {', '.join(found)}, which the engine's source branch does not run: the "
            "branch evaluates the source prompt alone at the stored trajectory, so it would silently differ from the "
            "inversion it is pinned to. Connect the plain prompt (the edit's own conditioning may carry a ControlNet, "
            "areas or step ranges); an image inverted with these cannot be edited by the engine (invert without them)")


def _check_source_prompt(guidance: Optional[dict], source_conditioning) -> None:
    """A warning when source_conditioning is not the positive conditioning the latent was inverted with (compared by
    value, as the replay's checks do: the same text encoded by another node is the same conditioning). The source
    branch evaluates it at the stored trajectory, which that prompt produced; another prompt's attention and features
    there are not the image's, and the edit is pinned to them (reference models, scripts/edit_source_prompt.py: PnP +
    features 0-0.3 kept structure distance 17.9 with the inversion's prompt, 37-58 with another; dit_kv 0-0.85 carried
    70-73 % of plain replay's edit instead of 101 %; the inversion's own prompt as the edit at cfg 1 came back at
    27-43 dB instead of 46-50). A warning, not an error: another source can be meant. Not warned: an unconditional
    inversion (positive = negative: the empty prompt on both), where the image's description served as well as the
    empty prompt or better; a record that does not say (made before positive_is_negative was recorded, or by a guider
    whose conditionings could not be read)."""
    if (guidance or {}).get("positive_is_negative") is not False:
        return
    if is_inversion_prompt(guidance, source_conditioning) is False:
        warn("Inversion Edit Engine: source_conditioning: it differs from the positive conditioning this latent was "
             "inverted with (another prompt, or the same text with other values: SDXL's size / crop, the pooled "
             "output ...). The engine's source branch evaluates it along the image's stored trajectory, which the "
             "inversion's prompt produced, so the edit borrows another prompt's attention and features: it keeps "
             "less of the image or carries less of the edit (reference models: pnp + features structure distance "
             "37-58 instead of 18, plain replay 47; dit_kv 70-73 % of the edit instead of 101 %), and the "
             "inversion's own prompt as the edit no longer gives the image back (27-43 dB instead of 46-50). Connect "
             "the conditioning the inversion node got as positive to source_conditioning too")


def _warn_empty_window(mode: str, start: float, end: float, window_start: float, window_end: float,
                       total: int) -> None:
    """A warning for a window that holds no step: the engine then changes nothing and the replay is the plain one.
    Named: an end left at the mode's default (-1) that the other, set end passed (window_start 0.6 with pnp's default
    end 0.5 is empty, which the user is unlikely to mean)."""
    if start < end:
        warn(f"Inversion Edit Engine: the window {start:g}-{end:g} holds no whole step of the inverted latent's "
             f"{total} (step k counts when k/{total} is inside it), so the engine changes nothing: the replay is the "
             "plain one. Widen the window or invert with more steps")
        return
    defaults = [f"window_{name} is mode {mode}'s default {value:g} (-1)" for name, value, given in
                (("start", start, window_start), ("end", end, window_end)) if given < 0]
    warn(f"Inversion Edit Engine: the window starts at {start:g} and ends at {end:g}"
         + (f" ({'; '.join(defaults)})" if defaults else "") + ": it holds no step, so the engine changes nothing: "
         "the replay is the plain one. Set window_end above window_start")


def _warn_ignored_settings(s: EditSettings, mode: str, strength: float, reweight: float, tokens: str,
                           masked: bool) -> None:
    """Warnings for inputs that change nothing in this configuration (the run succeeds and looks like an edit)."""
    if mode != "p2p" and (float(reweight) != 1.0 or tokens.strip()):
        warn(f"Inversion Edit Engine: reweight / tokens are Prompt-to-Prompt inputs; mode {mode} does not use them "
             "(nothing is re-weighted). Use mode p2p to re-weight tokens")
    elif mode == "p2p" and tokens.strip() and float(reweight) == 1.0:
        warn(f"Inversion Edit Engine: tokens {tokens.strip()!r} are re-weighted by reweight, which is 1: nothing is "
             "re-weighted. Set reweight above 1 to strengthen them, below 1 to weaken them")
    if s.active_steps == 0 and any(s.mask_steps):     # steps in the window, and still nothing to do
        if float(strength) == 0.0:
            warn("Inversion Edit Engine: strength 0 moves nothing towards the source, so the engine changes nothing: "
                 "the replay is the plain one. Raise strength to keep the source's structure")
        elif not s.self_layers:
            warn("Inversion Edit Engine: layers selects no layer, so the engine changes nothing: the replay is the "
                 "plain one. Choose layers (auto = the mode's preset), or give a mask (the source's keys / values "
                 "outside it)")
    # a mask keeps the source's keys / values outside it; where the mode already gives every masked layer the source's
    # keys and values at full strength (dit_kv, masactrl on every layer), the inside gets them too and the mask is moot
    if masked and s.use_k and s.use_v and s.strength >= 1.0 and s.mask_layers <= s.self_layers and all(
            inject or not held for inject, held in zip(s.self_steps, s.mask_steps)):
        warn(f"Inversion Edit Engine: the mask changes nothing here: mode {mode} at strength 1 already gives every "
             "self-attention layer it covers the source's keys and values, inside the mask too. For a KV-Edit-style "
             "edit (the edit's own keys / values inside the mask, the source's outside) set layers to none, or to "
             "fewer layers; to keep the outside of the image, give the mask to the Inverted Latent Sampler as well")


def _check_installed(patched, engine: EditEngine, layers: list, flux: bool, dit: bool, settings) -> None:
    """An error when the host's ModelPatcher did not keep the engine's patches where the pack reads them back:
    ``model_options["model_function_wrapper"]`` (patch_checks.edit_engine_of: source correction's offsets pass, the patch
    and cfg checks) and ``transformer_options["patches_replace"]`` (_patches_underneath: another node's patch the
    engine keeps working underneath its own). A host that keeps them elsewhere would drop those silently."""
    if edit_engine_of(patched) is not engine:
        raise RuntimeError("Inversion Edit Engine: this ComfyUI's ModelPatcher.set_model_unet_function_wrapper does "
                           "not keep the wrapper in model_options['model_function_wrapper'], where the pack finds the "
                           f"engine on a MODEL. {unsupported_host('the edit engine')}")
    replace = patched.model_options.get("transformer_options", {}).get("patches_replace", {})
    if flux:
        where = [("dit", (f"{layer[0]}_block", layer[1])) for layer in layers]
    elif dit:
        return
    else:
        where = [(which, tuple(layer)) for layer in layers
                 for which in (("attn1", "attn2") if settings.cross_steps else ("attn1",))]
    lost = [key for which, key in where if getattr(replace.get(which, {}).get(key), "engine", None) is not engine]
    if lost:
        raise RuntimeError("Inversion Edit Engine: this ComfyUI's ModelPatcher does not keep replace patches in "
                           "model_options['transformer_options']['patches_replace'] (none of the engine's is there: "
                           f"{lost[:2]} ...), where the engine finds another node's patch to keep it working under "
                           f"its own. {unsupported_host('the edit engine')}")


def _patches_underneath(model, layers: list, flux: bool, dit: bool, settings) -> tuple:
    """(model function wrapper, {("attn1" | "attn2", layer): replace patch}) the MODEL already has where the engine
    installs its own, for the engine to call in their place. What cannot be combined is an error naming it."""
    options = model.model_options
    wrapper = options.get("model_function_wrapper")
    if isinstance(wrapper, EditEngine):
        raise ValueError("model: this MODEL already carries an Inversion Edit Engine; build the engine from the "
                         "model without one (one engine per replay)")
    replace = options.get("transformer_options", {}).get("patches_replace", {})
    if flux:
        taken = [layer for layer in layers if (f"{layer[0]}_block", layer[1]) in replace.get("dit", {})]
        if taken:
            raise ValueError(f"model: another node already replaces Flux block(s) {taken[:4]}; the engine's key / "
                             "value injection replaces those blocks too and cannot be combined with it")
        return wrapper, {}
    if dit:
        return wrapper, {}
    inner = {}
    for which in ("attn1", "attn2"):
        patches = replace.get(which, {})
        for layer in layers:
            # the host looks a replace up by (block, number, index) first, then by (block, number)
            fn = patches.get(tuple(layer), patches.get(tuple(layer[:2])))
            if fn is not None:
                inner[(which, layer)] = fn
    if settings.cross_steps and any(which == "attn2" for which, _ in inner):
        raise ValueError("model: another node already replaces cross-attention (an attn2 replace patch, e.g. an "
                         "IP-Adapter); Prompt-to-Prompt rewrites the cross-attention output and cannot be combined "
                         "with it. Use pnp or masactrl (they keep such patches)")
    return wrapper, inner


_WINDOW_TIP = ("as a fraction of the replay's steps (0 = the noisiest step, 1 = the end), so it means the same at 4 "
               "or 50 steps; -1 = the mode's default")


class InversionEditEngine:
    DESCRIPTION = (
        "Structure-preserving edits of an inverted image: returns the MODEL with a source branch pinned to the "
        "inverted latent's stored trajectory (the image's own denoising path, exact at every step) running next to "
        "the edit, and the edit borrowing the source's attention. Connect the patched MODEL, the edit prompt and the "
        "same inverted latent to the Inverted Latent Sampler (or the Inverted Replay SAMPLER). Modes: "
        + " ".join(f"{m}: {h}" for m, h in MODE_HELP.items())
        + " With the source prompt (and source correction 1) the edit reconstructs the image.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the edit engine patched in (a clone; the input model is unchanged). Use it "
                       "only to replay this inverted latent.",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model the latent was inverted with."}),
                "inverted_latent": ("LATENT", {"tooltip": (
                    "The LATENT output of an inversion node (any method): its stored schedule and trajectory drive "
                    "the source branch. Give the sampler the same latent.")}),
                "source_conditioning": ("CONDITIONING", {"tooltip": (
                    "The prompt the image was inverted with (the source branch's prompt): connect the conditioning "
                    "the inversion node got as positive.")}),
                "mode": (list(MODES), {"default": "pnp", "tooltip": " ".join(
                    f"{m}: {h}" for m, h in MODE_HELP.items()) + " UNet models take pnp / masactrl / p2p, SD3 "
                    "(MMDiT) and Flux (upstream ComfyUI) take dit_kv."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": (
                    "How far the injected features move towards the source's (1 = replaced). Lower keeps less "
                    "structure and lets the prompt change more.")}),
                "window_start": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01, "tooltip": (
                    "Injection starts at this point of the schedule, " + _WINDOW_TIP + ". Later = more freedom for "
                    "the coarse layout.")}),
                "window_end": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01, "tooltip": (
                    "Injection stops here, " + _WINDOW_TIP + ". Later = more structure kept, weaker edit; "
                    "start >= end injects nothing (plain replay, warned).")}),
                "layers": ("STRING", {"default": "auto", "tooltip": (
                    "Self-attention layers that take the source's features: auto = the family preset (SD1.x PnP "
                    "output.4-11, MasaCtrl output.6-11; SDXL: PnP / P2P decoder, MasaCtrl output.0-2; others: "
                    "decoder; SD3: joint; Flux: all double and "
                    "single blocks), or a list like 'decoder', 'output.3-8', 'middle, output.0.0', 'single.20-', "
                    "'all'. Deeper/more layers keep more structure.")}),
                "residual_features": ("BOOLEAN", {"default": True, "tooltip": (
                    "PnP only (on in the PnP paper): also inject the source's decoder features (entering output "
                    "block 4 for SD1.x, 3 for SDXL, 1 for the reference model) over 1.6x the attention window. "
                    "This is what keeps the layout; attention alone changes little. Shorten the window if the edit "
                    "gets too weak.")}),
                "reweight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1, "tooltip": (
                    "P2P only: scale the cross-attention of the chosen tokens (>1 strengthens them, <1 weakens).")}),
                "tokens": ("STRING", {"default": "", "tooltip": (
                    "P2P re-weighting: comma-separated prompt token positions (CLIP: 1 = the first word; empty = "
                    "every token).")}),
                "source_branch": (list(SOURCE_BRANCHES), {"default": "batched", "tooltip": (
                    "batched: source and edit in one model call of twice the batch (fastest, 2x activation "
                    "memory); cached: the source first, its attention inputs kept for one call (less peak memory, "
                    "two calls). Same result. Steps outside the window cost nothing extra.")}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": (
                    "1 = the region to edit. Outside it the self-attention keys/values are the source's inside the "
                    "window (KV-Edit style); give the same mask to the Inverted Latent Sampler to also pin the "
                    "latent outside it.")}),
            },
        }

    def patch(self, model, inverted_latent, source_conditioning, mode, strength=1.0, window_start=-1.0,
              window_end=-1.0, layers="auto", residual_features=True, reweight=1.0, tokens="",
              source_branch="batched", mask=None):
        patched, _engine = build_engine_patch(
            model, inverted_latent, source_conditioning, mode, strength=strength, window_start=window_start,
            window_end=window_end, layers=layers, residual_features=residual_features, reweight=reweight,
            tokens=tokens, source_branch=source_branch, mask=mask)
        return (patched,)


NODE_CLASS_MAPPINGS = {"InversionEditEngine": InversionEditEngine}
NODE_DISPLAY_NAME_MAPPINGS = {"InversionEditEngine": "Inversion Edit Engine"}
