"""An analytic denoiser whose exact probability-flow ODE is known, for core unit tests.

Data x0 ~ N(0, s²) per coordinate. In EPS/V sigma space (x = x0 + σ·ε) the ideal denoiser is
D(x, σ) = x·s²/(s² + σ²) and the exact ODE trajectory is x(σ) = x0·√((s² + σ²)/s²).
In flow space (x = (1−σ)·x0 + σ·ε) with v(σ) = (1−σ)²s² + σ²: D(x, σ) = x·(1−σ)s²/v(σ) and x(σ) = x0·√v(σ)/s.
"""
from __future__ import annotations

import math

import torch

S = 0.5


def eps_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x * (S * S / (S * S + sigma * sigma))


def eps_exact(x0: torch.Tensor, sigma: float) -> torch.Tensor:
    return x0 * math.sqrt((S * S + sigma * sigma) / (S * S))


def flow_var(sigma: float, s: float = S) -> float:
    return (1 - sigma) ** 2 * s * s + sigma * sigma


def flow_denoiser(x: torch.Tensor, sigma: float, s: float = S) -> torch.Tensor:
    """The ideal flow denoiser for data N(0, s²) (s = S unless a test needs data large against the noise)."""
    return x * ((1 - sigma) * s * s / flow_var(sigma, s))


def flow_exact(x0: torch.Tensor, sigma: float) -> torch.Tensor:
    return x0 * (math.sqrt(flow_var(sigma)) / S)


def nonlinear_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A deterministic, non-linear stand-in for a network (no closed-form flow; for solver tests)."""
    return x * (S * S / (S * S + sigma * sigma)) + 0.05 * torch.tanh(x) * sigma / (1 + sigma)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def karras(n: int, lo: float = 0.03, hi: float = 14.6, rho: float = 7.0) -> torch.Tensor:
    """A Karras sampling schedule of n steps ending at 0 (EPS-style sigmas)."""
    ramp = torch.linspace(0, 1, n)
    s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1)])


def flow_schedule(n: int) -> torch.Tensor:
    """A flow-model sampling schedule of n steps from σ = 1 to 0."""
    return torch.linspace(1.0, 0.0, n + 1)


def image(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A batch of 'image latents' from the analytic data distribution N(0, S²)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g) * S
