"""Plain DDIM inversion: one application of the fixed-point map from the current latent.

    x_{i+1} = x̄_i + (σ_{i+1} − σ_i) · d(x_i, σ_{i+1})

The model is evaluated at the known x_i but labelled with the *next*, noisier level σ_{i+1} — the classic convention
of diffusers' inverse DDIM scheduler and of the EasyInv / PnP code (ComfyUI's FlipSigmas + euler labels it σ_i
instead, which cannot start at σ = 0). x̄_i is the target (x_i unless a hook such as EasyInv's blend changed it).
One model evaluation per step; the residual is not measured (that would cost one more).
"""
from __future__ import annotations

from torch import Tensor

from ..denoiser import Denoiser
from ..invert import StepContext
from ..record import StepStats
from ..steps import fixed_point_map


def ddim_step(den: Denoiser, target: Tensor, guess: Tensor, sigma_lo: float, sigma_hi: float,
              ctx: StepContext) -> tuple[Tensor, StepStats]:
    denoised = den(guess, sigma_hi)
    x_hi = fixed_point_map(guess, denoised, target, sigma_lo, sigma_hi)
    return x_hi, StepStats(sigma_lo=sigma_lo, sigma_hi=sigma_hi, iterations=1)
