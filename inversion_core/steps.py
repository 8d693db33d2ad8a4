"""The one step every method in this package inverts, written once, in ComfyUI's sigma space.

Sigma space (k-diffusion / ComfyUI): for EPS and V_PREDICTION models a noisy latent is x = x0 + σ·ε; for CONST (flow)
models x = (1 − σ)·x0 + σ·ε. In both, a denoiser D(x, σ) returns the clean estimate x̂0, and the deterministic DDIM
(η = 0) sampling step from level σ to σ' is the Euler step

    d(x, σ) = (x − D(x, σ)) / σ                       (the ODE direction, k-diffusion's ``to_d``)
    S(x; σ → σ') = x + (σ' − σ) · d(x, σ)              (DDIM for EPS/V, Euler for flow)

Sampling runs σ downwards. Inversion of the step σ_hi → σ_lo means finding z with S(z; σ_hi → σ_lo) = x_lo, i.e. the
fixed point of

    f(z) = x_lo + (σ_hi − σ_lo) · d(z, σ_hi)                                         (implicit inversion equation)

with residual r(z) = f(z) − z = x_lo − S(z). Plain DDIM inversion is one application of f from z = x_lo.

Endpoints: σ_lo = 0 needs no special case (f(z) = x0 + z − D(z, σ_hi), whose fixed point satisfies D(z, σ_hi) = x0,
i.e. the last sampling step returns x0 exactly). σ_hi is never 0, so the division is safe; a flow model's top level
σ = 1 is an ordinary level here (only the host's ``inverse_noise_scaling`` divides by 1 − σ, and our samplers do not
call it).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """ODE direction d(x, σ) = (x − D(x, σ)) / σ."""
    return (x - denoised) / sigma


def euler_step(x: Tensor, sigma: float, sigma_next: float, denoised: Tensor) -> Tensor:
    """S(x; σ → σ') = x + (σ' − σ)·d(x, σ): the deterministic DDIM / Euler step in sigma space."""
    return x + (sigma_next - sigma) * to_d(x, sigma, denoised)


def fixed_point_map(z: Tensor, denoised: Tensor, x_lo: Tensor, sigma_lo: float, sigma_hi: float) -> Tensor:
    """f(z) = x_lo + (σ_hi − σ_lo)·d(z, σ_hi), given denoised = D(z, σ_hi).

    A fixed point z* = f(z*) is an exact inverse: S(z*; σ_hi → σ_lo) = x_lo.
    """
    return x_lo + (sigma_hi - sigma_lo) * to_d(z, sigma_hi, denoised)


def input_matched_guess(x_lo: Tensor, sigma_lo: float, sigma_hi: float,
                        input_scale: Optional[Callable[[float], float]]) -> Tensor:
    """The classic DDIM-inversion evaluation point z⁰ for the step σ_lo → σ_hi: the latent the network sees at level
    σ_hi exactly as it saw x_lo at σ_lo,

        z⁰ = x_lo · c_in(σ_lo) / c_in(σ_hi),     c_in(σ) = the model's input scaling (host: ``calculate_input``)

    so D(z⁰, σ_hi) feeds the network x_lo's own normalised input under the next, noisier label — diffusers' inverse
    DDIM scheduler and the EasyInv / PnP code (they keep the VP latent and relabel the timestep). For EPS / V models
    c_in(σ) = 1/√(σ² + 1), so z⁰ = x_lo·√(σ_hi² + 1)/√(σ_lo² + 1) (~1.4–1.6× at the top of a 10-step SD schedule);
    for flow (CONST) models c_in = 1 and z⁰ = x_lo. Evaluating D(x_lo, σ_hi) instead would feed EPS networks a
    latent at the wrong magnitude (measured −8.8 dB at T=10 on a small EPS model).
    ``input_scale`` None means c_in ≡ 1.
    """
    if input_scale is None:
        return x_lo
    ratio = float(input_scale(sigma_lo)) / float(input_scale(sigma_hi))
    return x_lo if ratio == 1.0 else x_lo * ratio


def signal_scale(sigma: float, model_kind: str) -> float:
    """α(σ) in x = α(σ)·x0 + σ·ε: 1 − σ for flow (CONST) models, 1 in EPS / V / EDM sigma space."""
    return 1.0 - float(sigma) if model_kind == "CONST" else 1.0


def relaxation(sigma_lo: float, sigma_hi: float, model_kind: str) -> float:
    """The damping ω of the fixed-point iteration z ← z + ω·(f(z) − z) for the step σ_lo → σ_hi (the pack's own
    choice, not from the papers; measured in the README).

    The Jacobian of f(z) = x_lo + h·d(z, σ_hi), h = σ_hi − σ_lo, has two ends for a denoiser that is ideal for its data:
    * directions the model reads as *image* (data variance ≫ noise: D ≈ z/α, so ∂d/∂z = (1 − 1/α)/σ):
          λ_img = h·(1 − 1/α(σ_hi))/σ_hi  = −h/(1 − σ_hi) for flow,  0 for EPS / V;
    * directions it reads as *noise* (D does not move):  λ_noise = h/σ_hi  (≤ 1; 1 on the first step, σ_lo = 0).
    The plain iteration (ω = 1) multiplies the error by λ; on a flow model a step with h > 1 − σ_hi (σ_lo = 0 → 0.62,
    the first step of a 2-step schedule) has λ_img < −1 and *diverges* on the image's own content. Richardson's
    optimal damping for a spectrum in [λ_img, λ_noise],

        ω = 2 / ((1 − λ_img) + (1 − λ_noise)),

    makes both ends contract alike. It is used only where it damps (ω < 1, i.e. |λ_img| > λ_noise), so EPS / V models
    and small flow steps keep ω = 1; at a flow model's top level (α = 0) D ignores z and there is no image direction.
    Only the first step (σ_lo = 0) is damped, as measured: there it pays (flow reference model, T=2, 3 evaluations:
    22.0 → 27.5 dB); on later large steps real content falls short of the ideal gain 1/α (its variance is not ≫ the
    noise's) and the solver's secant safeguard corrects an overshoot better (damping them too cost 0.1–0.6 dB at
    T = 3, 4, 6).
    """
    alpha = signal_scale(sigma_hi, model_kind)
    if sigma_lo > 0.0 or alpha <= 0.0:
        return 1.0
    h = float(sigma_hi) - float(sigma_lo)
    lam_img = h * (1.0 - 1.0 / alpha) / float(sigma_hi)
    lam_noise = h / float(sigma_hi)
    return min(1.0, 2.0 / ((1.0 - lam_img) + (1.0 - lam_noise)))


def residual_rms(residual: Tensor) -> Tensor:
    """Per-item root-mean-square of a residual batch [B, ...] → [B] (float32)."""
    return residual.float().flatten(1).pow(2).mean(1).sqrt()
