"""The denoiser every method calls: D(x, σ) → x̂0, with the bookkeeping users and tests rely on.

The host (ComfyUI) supplies the raw function — its guider already applies CFG, LoRA, ControlNet and model patches —
and this wrapper adds what must not be re-implemented in each method: evaluation counts, fp32 results whatever the
model dtype, a NaN/inf check that names the sigma, an interrupt check before every evaluation, and evaluation of
only the still-active items of a batch (an item that converged stops paying).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

RawDenoiser = Callable[[Tensor, float], Tensor]


class NonFiniteModelOutput(FloatingPointError):
    """The model returned NaN or inf."""


@dataclass
class Denoiser:
    """Wraps ``raw(x, sigma) -> denoised``.

    ``forward_evals`` / ``backward_evals`` count model passes in units of one full batch (evaluating 1 of 4 items
    costs 0.25); solvers that backpropagate through the model add to ``backward_evals`` themselves.
    ``subset_ok`` says whether ``raw`` may be called on a subset of the batch items: the host bridge clears it when
    the conditioning differs per item, because the host would pair a sub-batch with the wrong prompts.
    ``on_eval()`` is called after every successful model evaluation (solvers need no change to report progress).
    """

    raw: RawDenoiser
    check_interrupt: Optional[Callable[[], None]] = None
    subset_ok: bool = True
    batch_size: int = 1
    calls: int = 0
    forward_evals: float = 0.0
    backward_evals: float = 0.0
    model_seconds: float = 0.0          # wall time spent inside ``raw`` (the rest of a run is the pack's overhead)
    on_eval: Optional[Callable[[], None]] = None
    input_scale: Optional[Callable[[float], float]] = None   # c_in(σ), the model's input scaling (None: 1)
    compute_dtype: torch.dtype = torch.float32   # what the network computes in (its input is rounded to this)

    def __call__(self, x: Tensor, sigma: float, active: Optional[Tensor] = None) -> Tensor:
        """D(x, σ) as float32. With a boolean ``active`` mask over the batch, only those rows are meaningful in the
        result (the others are returned as zeros when the model could skip them)."""
        if self.check_interrupt is not None:
            self.check_interrupt()
        if active is not None and not bool(active.any()):
            return torch.zeros(x.shape, dtype=torch.float32, device=x.device)   # nothing to evaluate: no model call
        if active is not None and self.subset_ok and not bool(active.all()):
            idx = active.nonzero().flatten()
            part = self._eval(x[idx], sigma)
            out = torch.zeros(x.shape, dtype=part.dtype, device=part.device)
            out = out.index_copy(0, idx, part)
        else:
            out = self._eval(x, sigma)
        if self.on_eval is not None:
            self.on_eval()
        return out

    def _eval(self, x: Tensor, sigma: float) -> Tensor:
        start = time.perf_counter()
        out = self.raw(x, float(sigma)).float()
        self.model_seconds += time.perf_counter() - start
        self.calls += 1
        self.forward_evals += x.shape[0] / max(self.batch_size, 1)
        if not torch.isfinite(out).all():
            raise NonFiniteModelOutput(f"the model returned NaN/inf at sigma={float(sigma):.6g}")
        return out

    def count_backward(self, items: int) -> None:
        """Record one backward pass through the model for ``items`` batch items."""
        self.backward_evals += items / max(self.batch_size, 1)
