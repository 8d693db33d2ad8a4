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

from typing import Any, Callable, Optional, Sequence

import torch

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.utils

from ..inversion_core import (LATENT_KEY, Denoiser, InversionRecord, MissingInversionRecord, as_sampling_schedule,
                              invert, read_latent_entry, replay)
from ..inversion_core.replay import source_offsets, step_weights
from ..inversion_core.invert import StepHook, StepSolver

MODEL_KINDS = ("CONST", "EDM", "V_PREDICTION", "EPS")  # most specific first (V_PREDICTION subclasses EPS)


def model_kind(model_sampling) -> str:
    """EPS / V_PREDICTION / EDM / CONST for the host's model_sampling object (its class is built dynamically)."""
    ms = model_sampling
    for name in MODEL_KINDS:
        cls = getattr(comfy.model_sampling, name, None)
        if cls is not None and isinstance(ms, cls):
            return name
    return type(ms).__name__


def model_family(model) -> str:
    """A coarse family name for presets: "SDXL" for SDXL-format latents, else the latent format's class name.
    ``model`` is a ModelPatcher or the host's BaseModel."""
    base = getattr(model, "model", model)
    fmt = type(getattr(base, "latent_format", None)).__name__
    return "SDXL" if fmt.startswith("SDXL") else fmt


def _uniform_conditioning(model_wrap) -> bool:
    """True when every prepared cond has batch 1, so a sub-batch of items can be evaluated on its own."""
    conds = getattr(model_wrap, "conds", None) or {}
    for cond_list in conds.values():
        for c in cond_list:
            for v in (c.get("model_conds") or {}).values():
                t = getattr(v, "cond", None)
                if isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] != 1:
                    return False
    return True


def _host_progress(callback) -> Optional[Callable]:
    """Adapt the core's (step done, total, x, denoised) callback to the host's (step index, x0, x, total) one."""
    if callback is None:
        return None
    return lambda step, total, x, denoised: callback(step - 1, denoised, x, total)


def _denoiser(model_wrap, extra_args: dict) -> Denoiser:
    def raw(x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
        return model_wrap(x, s, **extra_args)

    return Denoiser(raw, check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                    subset_ok=_uniform_conditioning(model_wrap))


class InversionSampler(comfy.samplers.Sampler):
    """A host SAMPLER that *inverts*: given a schedule (ascending, e.g. from FlipSigmas, or descending) it walks the
    latent from the lowest level up to the highest and returns the noise there. ``record`` holds the last run."""

    def __init__(self, solver: StepSolver, method: str, params: dict[str, Any], hooks: Sequence[StepHook] = (),
                 resolve_family: Optional[Callable[[str], None]] = None):
        self.solver, self.method, self.params, self.hooks = solver, method, dict(params), tuple(hooks)
        self.resolve_family = resolve_family     # settings that depend on the model family, known only here
        self.record: Optional[InversionRecord] = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        schedule = as_sampling_schedule(sigmas, "sigmas")
        x0 = latent_image if latent_image is not None else noise
        den = _denoiser(model_wrap, extra_args)
        if self.resolve_family is not None:
            self.resolve_family(model_family(model_wrap.inner_model))

        def progress(step: int, total: int, x: torch.Tensor) -> None:
            if callback is not None:
                callback(step - 1, x, x, total)

        kind = model_kind(model_wrap.inner_model.model_sampling)
        self.record = invert(den, x0, schedule, self.solver, method=self.method, params=self.params,
                             hooks=self.hooks, callback=progress, model_kind=kind)
        return self.record.states[-1].to(device=x0.device)


class ReplaySampler(comfy.samplers.Sampler):
    """A host SAMPLER that regenerates from inverted noise: the deterministic step every inversion inverts, down
    the given (descending) schedule, no noise added. Optional source-correction offsets and a mask that pins the
    region outside it to the stored trajectory (see inversion_core/replay.py)."""

    def __init__(self, offsets=None, weights=None, mask: Optional[torch.Tensor] = None, states_down=None):
        self.offsets, self.weights, self.mask, self.states_down = offsets, weights, mask, states_down

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        schedule = as_sampling_schedule(sigmas, "sigmas")
        x_top = latent_image if latent_image is not None else noise
        if denoise_mask is not None and self.mask is None:
            raise ValueError("latent noise_mask: a masked edit needs the stored inversion trajectory; use the "
                             "Inverted Latent Sampler's mask input instead of SamplerCustomAdvanced")
        den = _denoiser(model_wrap, extra_args)

        out = replay(den, x_top, schedule, callback=_host_progress(callback), offsets=self.offsets,
                     weights=self.weights, mask=self.mask, states_down=self.states_down)
        return out.to(device=x_top.device)


class _OffsetSampler(comfy.samplers.Sampler):
    """Runs only the source branch over the stored trajectory to compute the DirectInversion offsets."""

    def __init__(self, states_down, weights):
        self.states_down, self.weights, self.offsets = states_down, weights, None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        schedule = as_sampling_schedule(sigmas, "sigmas")
        den = _denoiser(model_wrap, extra_args)
        device = latent_image.device
        states = [s.to(device) for s in self.states_down]

        self.offsets = source_offsets(den, states, schedule, self.weights, callback=_host_progress(callback))
        return latent_image


# ---------------------------------------------------------------------------------------------------------------
# input checks shared by the nodes (errors name the input)

def check_latent(model, latent: Any, name: str = "latent") -> torch.Tensor:
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{name}: expected a LATENT (a dict with 'samples'), got {type(latent).__name__}")
    samples = latent["samples"]
    if samples.ndim != 4:
        raise ValueError(f"{name}: expected image latents [batch, channels, height, width], got shape "
                         f"{tuple(samples.shape)}")
    want = getattr(getattr(model.model, "latent_format", None), "latent_channels", None)
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
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise ValueError(f"scheduler: unknown scheduler {scheduler!r}; one of {comfy.samplers.SCHEDULER_NAMES}")
    ms = model.get_model_object("model_sampling")
    total = int(steps) if denoise >= 1.0 else int(int(steps) / float(denoise))
    full = comfy.samplers.calculate_sigmas(ms, scheduler, total).cpu()
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
                  sampler: InversionSampler) -> dict:
    """Invert ``latent`` on the descending ``schedule``; return a new inverted LATENT (the input is not modified)."""
    samples = check_latent(model, latent)
    check_conditioning(positive, samples.shape[0], "positive")
    check_conditioning(negative, samples.shape[0], "negative")
    if cfg < 0 or cfg != cfg:
        raise ValueError(f"cfg: must be >= 0, got {cfg}")
    top = _guide(model, positive, negative, cfg, samples, sampler, schedule.flip(0))
    entry = sampler.record.to_latent_entry()
    entry["params"]["cfg"] = float(cfg)
    out = {k: v for k, v in latent.items() if k not in ("samples", LATENT_KEY)}
    out["samples"] = top.to(samples.dtype).cpu()
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
            "(DDIM / EasyInv / GNRI / PreciseInv Invert) directly; nodes that rebuild latents drop it.") from None
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return latent["samples"], entry


def _mask_for(mask: Optional[torch.Tensor], samples: torch.Tensor, name: str) -> Optional[torch.Tensor]:
    """A MASK ([H, W], [B, H, W] or [B, 1, H, W], 1 = edit) resized to the latent (bilinear, as the host's samplers
    resize noise masks) → [B or 1, 1, h, w]."""
    if mask is None:
        return None
    m = mask.float()
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1:
        raise ValueError(f"{name}: expected a MASK [height, width] or [batch, height, width], got {tuple(mask.shape)}")
    if m.shape[0] not in (1, samples.shape[0]):
        raise ValueError(f"{name}: mask batch is {m.shape[0]} but the latent batch is {samples.shape[0]}")
    if not torch.isfinite(m).all():
        raise ValueError(f"{name}: contains NaN or inf")
    if tuple(m.shape[-2:]) != tuple(samples.shape[-2:]):
        m = torch.nn.functional.interpolate(m, size=samples.shape[-2:], mode="bilinear", align_corners=False)
    return m.clamp(0.0, 1.0)


def run_replay(model, positive, negative, cfg: float, latent: dict, *, source_positive=None,
               correction_strength: float = 0.0, correction_start_step: int = 0, correction_end_step: int = -1,
               mask: Optional[torch.Tensor] = None) -> dict:
    samples, entry = read_inverted(latent, "inverted_latent")
    check_latent(model, latent, "inverted_latent")
    check_conditioning(positive, samples.shape[0], "positive")
    check_conditioning(negative, samples.shape[0], "negative")
    kind = model_kind(model.get_model_object("model_sampling"))
    if entry.get("model_kind") and entry["model_kind"] != kind:
        raise ValueError(f"model: this latent was inverted with a {entry['model_kind']} model but this is a "
                         f"{kind} model; replay with the model it was inverted with")
    schedule = entry["sigmas"]
    total = len(schedule) - 1
    weights = step_weights(total, float(correction_strength), int(correction_start_step), int(correction_end_step))
    states_down = list(reversed(entry.get("states") or []))
    needs_states = any(weights) or mask is not None or "noise_mask" in latent
    if needs_states and len(states_down) != total + 1:
        raise ValueError("inverted_latent: source correction and masked edits need the stored trajectory, which this "
                         "latent lacks; connect an inversion node's output directly")
    offsets = None
    if any(weights):
        source = positive if source_positive is None else source_positive
        check_conditioning(source, samples.shape[0], "source_positive")
        offset_sampler = _OffsetSampler(states_down, weights)
        _guide(model, source, negative, cfg, samples, offset_sampler, schedule)
        offsets = offset_sampler.offsets
    m = _mask_for(mask if mask is not None else latent.get("noise_mask"), samples,
                  "mask" if mask is not None else "inverted_latent noise_mask")
    sampler = ReplaySampler(offsets, weights, m, states_down if m is not None else None)
    out_samples = _guide(model, positive, negative, cfg, samples, sampler, schedule)
    out = {k: v for k, v in latent.items() if k not in ("samples", LATENT_KEY, "noise_mask")}
    out["samples"] = out_samples.to(samples.dtype).cpu()
    return out
