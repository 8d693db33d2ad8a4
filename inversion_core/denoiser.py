"""The denoiser every method calls: D(x, σ) → x̂0, with the bookkeeping users and tests rely on.

The host (ComfyUI) supplies the raw function — its guider already applies CFG, LoRA, ControlNet and model patches —
and this wrapper adds what must not be re-implemented in each method: evaluation counts, fp32 results whatever the
model dtype, a NaN/inf check that names the sigma, and an interrupt check before every evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

RawDenoiser = Callable[[Tensor, float], Tensor]


class NonFiniteModelOutput(FloatingPointError):
    """The model returned NaN or inf."""


@dataclass
class Denoiser:
    """Wraps ``raw(x, sigma) -> denoised``.

    ``forward_evals`` counts model evaluations per batch item summed over items that were actually evaluated (an item
    that converged early and is left out of the batch does not pay); ``calls`` counts calls of the model.
    """

    raw: RawDenoiser
    check_interrupt: Optional[Callable[[], None]] = None
    calls: int = 0
    forward_evals: float = 0.0
    backward_evals: float = 0.0
    batch_size: int = field(default=1)

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        if self.check_interrupt is not None:
            self.check_interrupt()
        out = self.raw(x, float(sigma))
        self.calls += 1
        self.forward_evals += x.shape[0] / max(self.batch_size, 1)
        out = out.float()
        if not torch.isfinite(out).all():
            raise NonFiniteModelOutput(f"the model returned NaN/inf at sigma={float(sigma):.6g}")
        return out
