"""The inversion record: everything replay and reporting need, carried inside the inverted LATENT.

The LATENT's ``samples`` is the noise at the top of the schedule; this record lives under one namespaced key so the
host's latent nodes pass it through or drop it, never misread it. Replay needs only ``sigmas`` (plus ``samples``);
``states`` (the per-level trajectory x_0 … x_T in the model's sigma space) serves reporting and edit corrections.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .steps import signal_scale

LATENT_KEY = "inversion"
FORMAT_VERSION = 1


RESIDUAL_AT_STORED = "stored"                  # StepStats.residual_at: where the residual was measured
RESIDUAL_BEFORE_MAP = "one map step before"


@dataclass
class StepStats:
    """What one inversion step cost and how exact it is.

    ``residual`` is the RMS of x_lo − S(x_hi) per batch item when the method measured it (solvers do; plain DDIM
    would need one more model evaluation per step, so it reports None).
    """

    sigma_lo: float
    sigma_hi: float
    forward_evals: float = 0.0
    backward_evals: float = 0.0
    iterations: int = 1
    residual: Optional[list[float]] = None
    converged: Optional[bool] = None
    note: str = ""
    # per item, the residual plain DDIM's step would have had here, when the solver measured it (solvers that start
    # from the DDIM guess get it from their first iterate); the report flags a step whose residual is worse
    ddim_residual: Optional[list[float]] = None
    # where ``residual`` was measured: at the latent this step stores (RESIDUAL_AT_STORED), or at the best evaluated
    # point z* whose map value f(z*) is stored (RESIDUAL_BEFORE_MAP: the fixed-point solvers; f(z*) typically lands
    # closer than z*)
    residual_at: str = RESIDUAL_AT_STORED
    # why the residual does not say whether the replay drifts here ("" = it does, and the report judges the step)
    not_judged: str = ""


@dataclass
class InversionRecord:
    method: str
    params: dict[str, Any]
    sigmas: Tensor                      # descending sampling schedule σ_T … σ_0 (float32, CPU)
    states: list[Tensor]                # x_0 (the image latent) … x_T, model sigma space, float32, CPU
    steps: list[StepStats] = field(default_factory=list)
    model_kind: str = ""                # "EPS" / "V_PREDICTION" / "CONST" …
    seconds: float = 0.0
    model_seconds: float = 0.0          # of which inside the model (forward and backward passes)
    model_sigma_max: Optional[float] = None   # the model's own top sigma (pure noise), to say how far up we went
    warnings: list[str] = field(default_factory=list)   # what the user should know about this inversion
    model_signature: dict[str, Any] = field(default_factory=dict)   # the host's description of the model's sampling
    # what the inversion was guided with (nodes/guidance.py guidance_of: a fingerprint of the positive conditioning,
    # the cfg, the image inputs and hooks the model was given), for a replay to tell a reconstruction from a mismatch
    guidance: dict[str, Any] = field(default_factory=dict)
    # model evaluations outside the steps: the host bridge's check that the model is a function of its input
    # (Denoiser.repeat_difference), counted in forward_evals
    check_evals: float = 0.0

    @property
    def reach(self) -> Optional[float]:
        """σ at the top of the schedule as a fraction of the model's σ_max (None when unknown)."""
        return top_fraction(self.sigmas, self.model_sigma_max)

    @property
    def forward_evals(self) -> float:
        return sum(s.forward_evals for s in self.steps) + self.check_evals

    @property
    def backward_evals(self) -> float:
        return sum(s.backward_evals for s in self.steps)

    @property
    def unconverged_steps(self) -> list[int]:
        return [i for i, s in enumerate(self.steps) if s.converged is False]

    def stats(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "steps": len(self.steps),
            "forward_evals": self.forward_evals,
            "check_evals": self.check_evals,
            "backward_evals": self.backward_evals,
            "seconds": self.seconds,
            "model_seconds": self.model_seconds,
            "residual": [s.residual for s in self.steps],
            "iterations": [s.iterations for s in self.steps],
            "unconverged_steps": self.unconverged_steps,
            "ddim_residual": [s.ddim_residual for s in self.steps],
            "top_sigma": float(self.sigmas[0]),
            "model_sigma_max": self.model_sigma_max,
            "reach": self.reach,
        }

    def to_latent_entry(self) -> dict[str, Any]:
        """The plain dict stored at LATENT[LATENT_KEY] (tensors cloned, so later edits of the LATENT cannot reach it)."""
        return {
            "version": FORMAT_VERSION,
            "method": self.method,
            "params": dict(self.params),
            "sigmas": self.sigmas.clone(),
            "states": [s.clone() for s in self.states],
            "model_kind": self.model_kind,
            "model_signature": dict(self.model_signature),
            "guidance": dict(self.guidance),
            "stats": self.stats(),
            "step_stats": [vars(s).copy() for s in self.steps],
            "warnings": list(self.warnings),
        }


REACHES_TOP = 0.99      # a schedule whose top is at least this fraction of σ_max starts from the model's noise


def top_fraction(sigmas: Tensor, sigma_max: Optional[float]) -> Optional[float]:
    if not sigma_max:
        return None
    return float(sigmas.max()) / float(sigma_max)


def image_share(sigma: float, model_kind: str) -> float:
    """The image's share of a latent at level σ: 1 − σ for flow models (x = (1−σ)x0 + σε), 1/√(1+σ²) for EPS/V
    (x = x0 + σε, relative to the latent's RMS for a unit-variance image)."""
    if model_kind == "CONST":
        return max(0.0, 1.0 - float(sigma))
    return 1.0 / (1.0 + float(sigma) ** 2) ** 0.5


def reach_message(sigmas: Tensor, sigma_max: Optional[float], model_kind: str) -> Optional[str]:
    """None when the schedule starts at the model's σ_max; otherwise how far up the inversion went, in words."""
    frac = top_fraction(sigmas, sigma_max)
    if frac is None or frac >= REACHES_TOP:
        return None
    top = float(sigmas.max())
    share, share_max = image_share(top, model_kind), image_share(float(sigma_max), model_kind)
    msg = (f"the inversion stops at sigma {top:.4g}, {100 * frac:.1f}% of the model's sigma_max {float(sigma_max):.4g} "
           f"(the image is {100 * share:.0f}% of the latent there, {100 * share_max:.0f}% at sigma_max)")
    if share >= 0.2:
        msg += ": the inverted latent is still largely the image, so edits change little"
    return msg


# an inverted latent this many times the RMS of a noisy latent at the top level is not noise: the replay of its record
# may still reconstruct, but nothing else behaves (measured: DDIM / EasyInv / Exact / GNRI / BDIA at cfg 1 and 7 on the
# tiny SD1 / SD2-v / SDXL / SD3 test models, T = 2 / 5 / 10: 0.17-2.8x; BDIA at gamma 0.7 and T = 50 on the EPS
# reference model 6.7e5x (scripts/bdia_gamma_steps.py); the default gamma "auto" keeps it at 1.9x there)
NOISE_SCALE_LIMIT = 10.0


def noise_scale(x0: Tensor, top: Tensor, sigma_top: float, model_kind: str) -> float:
    """The largest per-item ratio of the top latent's RMS to that of a noisy latent at ``sigma_top`` made from the image
    ``x0`` (sigma space: sqrt((signal_scale * RMS(x0))^2 + sigma^2), image and unit noise uncorrelated)."""
    a = signal_scale(sigma_top, model_kind)
    x0, top = x0.detach().double().cpu(), top.detach().double().cpu()    # float64: a huge top's squares overflow
    dims = tuple(range(1, x0.ndim))
    expected = ((a * x0.pow(2).mean(dim=dims).sqrt()) ** 2 + float(sigma_top) ** 2).sqrt().clamp_min(1e-12)
    return float((top.pow(2).mean(dim=dims).sqrt() / expected).max())


def noise_scale_message(x0: Tensor, top: Tensor, sigma_top: float, model_kind: str,
                        limit: float = NOISE_SCALE_LIMIT) -> Optional[str]:
    """None when the inverted latent ``top`` has about the scale of a noisy latent at ``sigma_top``; otherwise what that
    means, in words."""
    ratio = noise_scale(x0, top, sigma_top, model_kind)
    if not ratio > limit:       # NaN-safe: a non-finite top was an error already
        return None
    return (f"the inverted latent is {ratio:.3g}x the RMS of a noisy latent at its top level sigma {float(sigma_top):.4g}"
            ": it is not noise. Its own replay may still reconstruct the image, but an edit (another prompt, cfg or "
            "mask) or another sampler starts from a latent the model never sees, and comes out wrong")


# What a step's residual costs the reconstruction. The replay from the stored z of step i (σ_lo → σ_hi) lands at
# level σ_lo off x_lo by the residual r_i; the replay's later steps carry that error down to the image. For data of
# RMS s seen as a Gaussian, the sampling ODE maps a latent of level σ to the image by the factor
#     g(σ) = s / √(s² + σ²)                (EPS / V:  x = x_0 + σ·ε)
#     g(σ) = s / √((1 − σ)²·s² + σ²)       (flow:     x = (1 − σ)·x_0 + σ·ε)
# so the image is missed by about r_i·g(σ_lo) / s of its RMS (exactly r_0 / s on the first step, σ_lo = 0: the replay's
# last step is the denoiser itself, D(z, σ_1) = x_0). Measured against the replay (latent PSNR, peak 1; 2 held-out
# images on both reference models, Exact balanced and GNRI's default, schedulers karras / normal / exponential /
# simple / sgm_uniform, T = 1, 2, 3, 4, 6, 10: 240 runs): every run above 0.5 reconstructs below 20 dB (EPS karras /
# normal / exponential at T=2: 2.4-4.4 dB, their second step σ 0.029 → 14.6 at 1.1-3.2; exponential T=3 14.8 dB at
# 0.64; flow karras T=2 15.5 dB at 0.76; T=1 on both); every run at T >= 4 is below 0.3. Earlier, on the first step
# only (8 images, worst item): EPS T = 3 / 4 / 10 0.03, flow T = 10 / 4 0.08 / 0.30, flow T = 2 (27.5 dB) 0.64.
LANDING_MISS_LIMIT = 0.5


def landing_factor(sigma: float, scale: float, kind: str) -> float:
    """g(σ) above: how much of an error at level ``sigma`` the replay carries down to an image of RMS ``scale``."""
    s2, sig = float(scale) ** 2, float(sigma)
    return float(scale) / math.sqrt(((1.0 - sig) ** 2 * s2 if kind == "CONST" else s2) + sig * sig)


def landing_misses(sigma_lo: Sequence[float], residual: Sequence[Optional[Sequence[float]]],
                   evaluations: Sequence[Optional[float]], x0: Tensor, kind: str) -> dict[int, list[tuple[int, float]]]:
    """{step: [(item, miss)]} for the steps whose residual reaches the image as more than LANDING_MISS_LIMIT of the
    image latent's RMS (see above), per step the lower levels ``sigma_lo``, the per-item ``residual`` (None: not
    measured) and the model ``evaluations`` (a step of one is the DDIM step, whose recorded residual is its guess's:
    not judged). Empty when the schedule does not start from the image (σ_lo of the first step above 0)."""
    if not sigma_lo or float(sigma_lo[0]) != 0.0:
        return {}
    scale = x0.detach().double().cpu().flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).tolist()
    out = {}
    for k, (lo, res, n) in enumerate(zip(sigma_lo, residual, evaluations)):
        if not res or (n is not None and n <= 1.0):
            continue
        miss = [(i, float(r) * landing_factor(lo, m, kind) / m) for i, (r, m) in enumerate(zip(res, scale))]
        miss = [(i, v) for i, v in miss if v > LANDING_MISS_LIMIT]
        if miss:
            out[k] = miss
    return out


def relative_difference(top: Tensor, samples: Tensor) -> float:
    """RMS(samples − top) / RMS(top), in float64 on the CPU: how far a latent is from a stored top state. (float64: the
    squares of a BDIA top at a small gamma, ~1e18, overflow float32's sums, and a NaN here took the record's own
    latent for a changed one.)"""
    a, b = top.detach().double().cpu(), samples.detach().double().cpu()
    return float((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt().clamp_min(1e-12))


def describe_change(top: Tensor, samples: Tensor, rtol: float = 1e-3) -> Optional[str]:
    """None when ``samples`` is still ``top`` (the stored top state, both in the model's sigma space) within a relative
    RMS ``rtol``; otherwise what happened to it: flipped / rotated / scaled / something else, with the size."""
    a, b = top.detach().double().cpu(), samples.detach().double().cpu()
    if a.shape != b.shape:
        return f"its shape changed from {tuple(a.shape)} to {tuple(b.shape)}"
    diff = relative_difference(a, b)
    if diff <= rtol:
        return None
    scale = a.pow(2).mean().sqrt().clamp_min(1e-12)

    def rel(x: Tensor, y: Tensor) -> float:     # against the stored top's scale, for its flipped / scaled copies
        return float((x - y).pow(2).mean().sqrt() / scale)

    candidates = [("flipped left-right", a.flip(-1)), ("flipped top-bottom", a.flip(-2))]
    if a.shape[-1] == a.shape[-2]:
        candidates += [(f"rotated by {k * 90} degrees", torch.rot90(a, k, dims=(-2, -1))) for k in (1, 2, 3)]
    for what, t in candidates:
        if rel(t, b) <= rtol:
            return what
    k = float((a * b).sum() / a.pow(2).sum().clamp_min(1e-24))
    if abs(k) > 1e-6 and rel(a * k, b) <= rtol:
        return f"multiplied by {k:.6g}"     # 6 digits: a factor of 1.0002 is a change, not "1"
    return f"changed (relative RMS difference {diff:.3g}, e.g. noise mixed in or another latent)"


class MissingInversionRecord(KeyError):
    pass


def read_latent_entry(latent: dict, shape: torch.Size) -> dict[str, Any]:
    """Return the record of an inverted LATENT, checking it still belongs to ``samples`` of ``shape``."""
    entry = latent.get(LATENT_KEY)
    if not isinstance(entry, dict) or "sigmas" not in entry:
        raise MissingInversionRecord(LATENT_KEY)
    top = entry["states"][-1] if entry.get("states") else None
    if top is not None and tuple(top.shape) != tuple(shape):
        raise ValueError(
            f"the inverted latent's samples have shape {tuple(shape)} but it was inverted at {tuple(top.shape)}; "
            "a node between the inversion and the sampler changed the latent (resize, crop, batch)")
    return entry
