"""Replay: the deterministic sampler that regenerates an image from inverted noise on the stored schedule.

It takes exactly the step every inversion method inverts (steps.euler_step, DDIM η = 0), level by level down the
schedule the latent was inverted on, adding no noise. With the source prompt and cfg 1 it returns the image; with a
new prompt it edits.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .denoiser import Denoiser, NonFiniteModelOutput
from .invert import StepFailed
from .steps import euler_step

ReplayCallback = Callable[[int, int, Tensor, Tensor], None]  # (step done, total, x_i, denoised)


def replay(den: Denoiser, x_top: Tensor, sampling_sigmas: Tensor,
           callback: Optional[ReplayCallback] = None) -> Tensor:
    """x_T → x_0 along the descending ``sampling_sigmas`` (float32 arithmetic; input not modified)."""
    x = x_top.detach().float().clone()
    den.batch_size = x.shape[0]
    s = sampling_sigmas.tolist()
    total = len(s) - 1
    for i in range(total):
        sigma, sigma_next = s[i], s[i + 1]
        try:
            denoised = den(x, sigma)
        except NonFiniteModelOutput as e:
            raise StepFailed(f"sampling step {i + 1}/{total} (sigma {sigma:.4g} -> {sigma_next:.4g}): {e}") from e
        x = euler_step(x, sigma, sigma_next, denoised)
        if callback is not None:
            callback(i + 1, total, x, denoised)
    return x
