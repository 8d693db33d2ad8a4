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
import math
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch

import comfy.latent_formats
import comfy.model_management
import comfy.samplers
import comfy.utils

from .common import AUTO_SCHEDULER, scheduler_for
from .guidance import (CONDITIONING_RTOL, check_guider_conditioning, check_item_pairing, check_model_inputs,
                       check_replay_cfg, check_replay_guider, check_source_positive, guidance_of, guider_cfg,
                       guider_conds, guider_patcher, replay_conditionings, scheduled_hooks)
from .host_compat import model_kind, unsupported_host, warn
from .patch_checks import (BATCH_HOOKS, VARYING_PATCH_KINDS, base_weights, check_engine_wrapper, check_output_cache,
                           check_patches, check_sampling, edit_engine_of, patch_signature, sampling_signature,
                           varying_model)
from ..inversion_core import (LATENT_KEY, Denoiser, InversionRecord, MissingInversionRecord, as_sampling_schedule,
                              invert, read_latent_entry, replay)
from ..inversion_core.edit.select import FAMILY_LAYERS
from ..inversion_core.fingerprint import matches
from ..inversion_core.record import (describe_change, landing_misses, noise_scale_message, reach_message,
                                     relative_difference)
from ..inversion_core.replay import source_offsets, step_weights
from ..inversion_core.solvers.bdia import METHOD as BDIA, bdia_replay, bdia_source_offsets
from ..inversion_core.invert import StepHook, StepSolver

INVERSION_NODES = "DDIM / EasyInv / Exact / GNRI / PreciseInv / BDIA Invert"


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
                                            "(denoise < 1 on the scheduler, or the low half of SplitSigmas), this is "
                                            "expected")
                warn(f"{self.method} inversion: {self.record.warnings[-1]}")
        for said in [above, ignored_noise(noise, latent_image), self._blown_up(schedule, kind),
                     EMPTY_LATENT if empty else None, scheduled_hooks(model_wrap),
                     missed_tolerance(self.record, self.method, self.params), replay_landing(self.record)]:
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


def replay_landing(record: InversionRecord) -> Optional[str]:
    """A note when a step's residual reaches the image as a large part of it (record.landing_misses): the replay then
    lands that far off the image, whatever the method promised (a budget is spent without a word otherwise). At one
    step that is the first step's residual itself; at two or three steps of karras / exponential it is the huge step
    above a tiny lowest one (EPS reference model, Exact balanced, karras T=2: 2.4 dB, silent before). Not for BDIA
    (its pair replay is exact whatever its starter step's residual) or a schedule that does not start from the
    image."""
    steps = record.steps
    if not steps or not record.states or any(st.not_judged for st in steps):
        return None
    misses = landing_misses([st.sigma_lo for st in steps], [st.residual for st in steps],
                            [st.forward_evals for st in steps], record.states[0], record.model_kind)
    if not misses:
        return None
    k = max(misses, key=lambda j: max(m for _, m in misses[j]))
    worst = max(m for _, m in misses[k])
    items = sorted({i for found in misses.values() for i, _ in found})
    which = ("the first step" if k == 0 else f"step {k + 1}") + f" (sigma {steps[k].sigma_lo:.4g} -> " \
        f"{steps[k].sigma_hi:.4g})"
    others = f" (and step(s) {', '.join(str(j + 1) for j in sorted(misses) if j != k)})" if len(misses) > 1 else ""
    return (f"{which}{others} was left with a residual of up to {100 * worst:.0f}% of the image latent's RMS as the "
            f"replay carries it down to the image (item(s) {', '.join(map(str, items))}), so the replay lands about "
            "that far off the image and the reconstruction is poor (EPS reference model: one step 9 dB; karras at two "
            "steps, whose second step spans sigma 0.029 -> 14.6, 2.4 dB). More steps, a schedule without one huge "
            "step, a larger budget or BDIA Invert help")


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
                             "Inverted Replay SAMPLER: cfg", patcher, items=found.items)
        if guider is not None:
            check_replay_guider(found.guidance, guider, conds.get("positive"), conds.get("negative"),
                                "Inverted Replay SAMPLER: guider", patcher)
        replay_conds = replay_conditionings(conds.get("positive"), conds.get("negative"), cfg)
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
            f"({INVERSION_NODES}) directly; nodes that rebuild latents drop it. A latent made by "
            "SamplerCustomAdvanced with an inversion SAMPLER carries none either: replay it there with the Inverted "
            "Replay SAMPLER, which finds the inversion by its noise") from None
    except ValueError as e:
        top = (latent.get(LATENT_KEY) or {}).get("states") or [None]
        picked = (isinstance(top[-1], torch.Tensor) and top[-1].shape[1:] == latent["samples"].shape[1:]
                  and top[-1].shape[0] != latent["samples"].shape[0])
        raise ValueError(f"{name}: {e}" + (
            ". To replay some items of a batch inversion (LatentFromBatch, RepeatLatentBatch), use "
            "SamplerCustomAdvanced with the Inverted Replay SAMPLER and the inversion's sigmas: it finds each "
            "item's inversion by its noise" if picked else "")) from None
    return latent["samples"], entry


FLOAT32_ROUND_TRIP = 1e-5   # relative RMS a float32 top keeps through the latent format's scale in and out


def _rtol(dtype: torch.dtype) -> float:
    """How far a stored latent may drift from the record's top by storage alone (dtype rounding, latent format).
    Not looser for float32: at 1e-3 a LatentMultiply by 1.0002 counted as the inverted noise and its replay was
    unwarned at 53 dB instead of 82 (Exact, exact preset)."""
    return 1e-2 if dtype in (torch.float16, torch.bfloat16) else FLOAT32_ROUND_TRIP


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
        check_model_inputs(entry.get("guidance"), replay_conditionings(positive, negative, float(cfg), source_positive
                                                                if any(weights) else None), "replay")
    sampler = ReplaySampler(offsets, weights, m, states_down if m is not None else None, checked=True, bdia=bdia)
    out_samples = _guide(model, positive, negative, cfg, start, sampler, schedule)
    out = {k: v for k, v in latent.items() if k not in ("samples", LATENT_KEY, "noise_mask")}
    out["samples"] = out_samples.to(samples.dtype).cpu()
    return out
