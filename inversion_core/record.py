"""The inversion record: everything replay and reporting need, carried inside the inverted LATENT.

The LATENT's ``samples`` is the noise at the top of the schedule; this record lives under one namespaced key so the
host's latent nodes pass it through or drop it, never misread it. Replay needs only ``sigmas`` (plus ``samples``);
``states`` (the per-level trajectory x_0 … x_T in the model's sigma space) serves reporting and edit corrections.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

LATENT_KEY = "inversion"
FORMAT_VERSION = 1


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


@dataclass
class InversionRecord:
    method: str
    params: dict[str, Any]
    sigmas: Tensor                      # descending sampling schedule σ_T … σ_0 (float32, CPU)
    states: list[Tensor]                # x_0 (the image latent) … x_T, model sigma space, float32, CPU
    steps: list[StepStats] = field(default_factory=list)
    model_kind: str = ""                # "EPS" / "V_PREDICTION" / "CONST" …
    seconds: float = 0.0
    model_seconds: float = 0.0          # of which inside the model (forward calls)

    @property
    def forward_evals(self) -> float:
        return sum(s.forward_evals for s in self.steps)

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
            "backward_evals": self.backward_evals,
            "seconds": self.seconds,
            "model_seconds": self.model_seconds,
            "residual": [s.residual for s in self.steps],
            "iterations": [s.iterations for s in self.steps],
            "unconverged_steps": self.unconverged_steps,
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
            "stats": self.stats(),
            "step_stats": [vars(s).copy() for s in self.steps],
        }


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
