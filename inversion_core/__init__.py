"""Diffusion inversion in ComfyUI's sigma space — pure torch, no host imports.

A method is a step solver for the implicit equation S(x_{i+1}; σ_{i+1} → σ_i) = x_i (steps.py), driven along a
schedule by invert.invert; replay.replay is the sampler that undoes it.
"""
from .denoiser import Denoiser, NonFiniteModelOutput
from .invert import StepContext, StepFailed, invert
from .record import LATENT_KEY, InversionRecord, MissingInversionRecord, StepStats, read_latent_entry
from .replay import replay
from .schedule import ScheduleError, as_sampling_schedule, inversion_pairs
from .solvers.ddim import ddim_step

__all__ = [
    "Denoiser", "NonFiniteModelOutput", "StepContext", "StepFailed", "invert", "LATENT_KEY", "InversionRecord",
    "MissingInversionRecord", "StepStats", "read_latent_entry", "replay", "ScheduleError", "as_sampling_schedule",
    "inversion_pairs", "ddim_step",
]
