"""Plain DDIM inversion: one model evaluation per step, in one of two labelling conventions.

``ddim_step`` — the classic DDIM inversion (diffusers' inverse scheduler, the EasyInv / PnP / GNRI code): the network
sees the current latent x_i *at its own input scale* and the call is labelled with the next, noisier level σ_{i+1}:

    z⁰ = x_i · c_in(σ_i) / c_in(σ_{i+1})                      (steps.input_matched_guess; the driver passes it)
    x_{i+1} = x̄_i + (σ_{i+1} − σ_i) · d(z⁰, σ_{i+1}) = f(z⁰)   (one application of the fixed-point map)

x̄_i is the step's target (x_i unless a hook such as EasyInv's blend changed it). d(z⁰, σ_{i+1}) is exactly the noise
estimate ε̂ the VP-space formula uses, so x_{i+1} = x_i + (σ_{i+1} − σ_i)·ε̂ — diffusers' step written in sigma space.

``current_level_step`` — ComfyUI's own "unsampling" (BasicScheduler → FlipSigmas → euler): the model is evaluated at
x_i labelled with its *own* level σ_i (the image level 0 lifted to ``FLIP_FLOOR`` = 1e-4, as FlipSigmas does):

    x_{i+1} = x_i + (σ_{i+1} − σ_i) · d(x_i, max(σ_i, 1e-4))

The two differ by which end of the step the derivative is taken at; neither is exact (every exact method solves the
implicit equation instead). Which reconstructs better depends on the model and schedule: the benchmark measures both.
The residual is not measured (that would cost one more evaluation).
"""
from __future__ import annotations

from torch import Tensor

from ..denoiser import Denoiser
from ..invert import StepContext
from ..record import StepStats
from ..steps import euler_step, fixed_point_map

FLIP_FLOOR = 1e-4          # FlipSigmas replaces a leading σ = 0 by this level so that d(x, σ) is finite
CONVENTIONS = ("input-matched", "current level")


def ddim_step(den: Denoiser, target: Tensor, guess: Tensor, sigma_lo: float, sigma_hi: float,
              ctx: StepContext) -> tuple[Tensor, StepStats]:
    denoised = den(guess, sigma_hi)
    x_hi = fixed_point_map(guess, denoised, target, sigma_lo, sigma_hi)
    return x_hi, StepStats(sigma_lo=sigma_lo, sigma_hi=sigma_hi, iterations=1)


def current_level_step(den: Denoiser, target: Tensor, guess: Tensor, sigma_lo: float, sigma_hi: float,
                       ctx: StepContext) -> tuple[Tensor, StepStats]:
    x_lo = ctx.states[-1].to(device=target.device, dtype=target.dtype)
    level = max(sigma_lo, FLIP_FLOOR)
    x_hi = target + (euler_step(x_lo, level, sigma_hi, den(x_lo, level)) - x_lo)
    return x_hi, StepStats(sigma_lo=sigma_lo, sigma_hi=sigma_hi, iterations=1)


def ddim_solver(convention: str = "input-matched"):
    """The step solver for a labelling ``convention`` (one of CONVENTIONS)."""
    if convention == "input-matched":
        return ddim_step
    if convention == "current level":
        return current_level_step
    raise ValueError(f"convention: one of {CONVENTIONS}, got {convention!r}")
