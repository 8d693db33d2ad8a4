"""Gradients through a host model inside ComfyUI's executor (which runs every node under ``torch.inference_mode()``).

Three things stand between a sampler and ``torch.autograd`` there, measured on the PyPI fork and on the host's SD UNet:

1. Inference mode itself: no graph is recorded. → ``torch.inference_mode(False)`` + ``torch.enable_grad()``.
2. The weights are *inference tensors* (loaded, moved and LoRA-patched under inference mode). Any op that records
   autograd history with one of them as an input fails — "Inference tensors cannot be saved for backward" — for
   reverse mode *and* for forward-mode AD, and ``saved_tensors_hooks`` cannot intercept it (the check runs first).
   → every inference-tensor parameter / buffer of the models the guider loaded (``model_wrap.inner_model``, the host
   BaseModel, plus ControlNet-style ``loaded_models``) is swapped for a clone made outside inference mode
   (``requires_grad=False``: we only need gradients w.r.t. the latent); normal parameters that require grad are frozen
   for the duration. Everything is restored on exit, error or not — the host's ModelPatcher finds exactly the objects
   it put there. Cost: one extra copy of the weights for the duration of the solve (``GradModeReport.extra_bytes``;
   1× the model's weight size on its device — e.g. ~1.7 GB for an fp16 SD1.5 UNet, ~5 GB for SDXL).
3. In-place updates of saved activations in some host blocks (the PyPI fork's BasicTransformerBlock does
   ``x += n`` after LayerNorm saved ``x``; upstream's own UNet block has since changed to ``x = n + x``, but its Flux
   blocks still add in place): reverse mode then fails with "modified by an inplace operation". → ``protect_saved=True`` installs saved-tensor hooks that copy every
   saved tensor which is part of the graph (requires grad) when it is saved, and version-check the others on use
   (identity hooks alone would silently skip autograd's own check and return a wrong gradient — seen on the fork).
   Costs one copy of the saved activations, so ``GradInversionSampler`` first runs without it and retries with it
   only when the host raises that error (it does so at the first backward pass, after a few model evaluations).
   The aborted attempt's model evaluations are counted in the record (added to its first step, with a note) and
   ``params["derivatives"]`` says which derivative path ran, so the report shows both.
   Forward-mode AD (GNRI's Jacobian-vector products) is unaffected by in-place updates.

The sampler's tensor inputs (noise, latent, sigmas, mask) are inference tensors too; they are cloned inside the
context so that nothing the solver touches is one.
"""
from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from .bridge import InversionSampler
from .host_compat import model_kind

INPLACE_ERROR = "modified by an inplace operation"


@dataclass
class GradModeReport:
    cloned_tensors: int = 0
    extra_bytes: int = 0                  # bytes of the weight / buffer clones held during the solve
    frozen_parameters: int = 0            # normal parameters whose requires_grad was switched off meanwhile
    protect_saved: bool = False
    saved_copies: int = 0                 # saved activations copied by the protection hooks (cumulative)
    saved_copy_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"cloned_tensors": self.cloned_tensors, "extra_mib": round(self.extra_bytes / 2 ** 20, 3),
                "frozen_parameters": self.frozen_parameters, "protect_saved": self.protect_saved}


def _modules(model_wrap) -> list[torch.nn.Module]:
    """The host BaseModel plus every other loaded nn.Module the guider prepared (ControlNets ...), deduplicated."""
    found: list[torch.nn.Module] = []
    inner = getattr(model_wrap, "inner_model", None)
    if isinstance(inner, torch.nn.Module):
        found.append(inner)
    for patcher in getattr(model_wrap, "loaded_models", None) or []:
        m = getattr(patcher, "model", patcher)
        if isinstance(m, torch.nn.Module):
            found.append(m)
    out, seen = [], set()
    for m in found:
        if id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


class _VersionChecked:
    __slots__ = ("tensor", "version")

    def __init__(self, t: torch.Tensor):
        self.tensor, self.version = t, t._version


def _make_hooks(report: GradModeReport):
    def pack(t: torch.Tensor):
        if t.requires_grad and not isinstance(t, torch.nn.Parameter):
            report.saved_copies += 1
            report.saved_copy_bytes += t.numel() * t.element_size()
            return t.clone()
        return _VersionChecked(t)

    def unpack(p):
        if isinstance(p, _VersionChecked):
            if p.tensor._version != p.version:
                raise RuntimeError("grad_mode: a tensor saved for backward was " + INPLACE_ERROR)
            return p.tensor
        return p

    return pack, unpack


@contextlib.contextmanager
def grad_mode(model_wrap: Any = None, *, protect_saved: bool = False,
              modules: Optional[list[torch.nn.Module]] = None) -> Iterator[GradModeReport]:
    """Leave inference mode, enable grad, make the host model's weights usable by autograd; restore on exit.

    ``model_wrap``: what a host Sampler receives (the CFGGuider); ``modules`` overrides the module list.
    """
    report = GradModeReport(protect_saved=protect_saved)
    swapped: list[tuple[dict, str, torch.Tensor]] = []
    frozen: list[torch.nn.Parameter] = []
    with torch.inference_mode(False), torch.enable_grad():
        try:
            memo: dict[int, torch.Tensor] = {}
            for module in (modules if modules is not None else _modules(model_wrap)):
                for sub in module.modules():
                    for store, is_param in ((sub._parameters, True), (sub._buffers, False)):
                        for name, t in list(store.items()):
                            if t is None:
                                continue
                            if t.is_inference():
                                clone = memo.get(id(t))
                                if clone is None:
                                    data = t.detach().clone()
                                    clone = torch.nn.Parameter(data, requires_grad=False) if is_param else data
                                    memo[id(t)] = clone
                                    report.cloned_tensors += 1
                                    report.extra_bytes += data.numel() * data.element_size()
                                store[name] = clone
                                swapped.append((store, name, t))
                            elif is_param and t.requires_grad:
                                t.requires_grad_(False)
                                frozen.append(t)
                                report.frozen_parameters += 1
            del memo
            with contextlib.ExitStack() as stack:
                if protect_saved:
                    stack.enter_context(torch.autograd.graph.saved_tensors_hooks(*_make_hooks(report)))
                yield report
        finally:
            for store, name, original in reversed(swapped):
                store[name] = original
            for p in frozen:
                p.requires_grad_(True)


def _normal(t):
    return t.detach().clone() if isinstance(t, torch.Tensor) else t


class GradInversionSampler(InversionSampler):
    """InversionSampler for solvers that differentiate through the model (GNRI paper variant, PreciseInv).

    Sets the solver's marginal (``set_marginal``) from the host model's kind, then runs the inversion inside
    ``grad_mode`` with cloned inputs. ``needs_grad=False`` only does the former (GNRI's reference-code variant).
    ``self.params["grad_mode"]`` records what grad mode cost.
    """

    def __init__(self, solver, method: str, params: dict[str, Any], hooks=(), needs_grad: bool = True):
        super().__init__(solver, method, params, hooks)
        self.needs_grad = needs_grad
        self.report: Optional[GradModeReport] = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        set_marginal = getattr(self.solver, "set_marginal", None)
        if set_marginal is not None:
            set_marginal(model_kind(model_wrap.inner_model.model_sampling))
        if not self.needs_grad:
            return super().sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                                  disable_pbar)
        aborted = None
        aborted_seconds = aborted_model_seconds = 0.0
        known = _needs_protection(model_wrap)
        for protect in ((True,) if known else (False, True)):
            started = time.perf_counter()
            try:
                with grad_mode(model_wrap, protect_saved=protect) as report:
                    out = super().sample(model_wrap, _normal(sigmas), extra_args, callback, _normal(noise),
                                         _normal(latent_image), _normal(denoise_mask), disable_pbar)
            except RuntimeError as e:
                if protect or INPLACE_ERROR not in str(e):
                    raise
                den = getattr(self, "denoiser", None)
                aborted = (den.forward_evals, den.backward_evals) if den is not None else (0.0, 0.0)
                aborted_seconds = time.perf_counter() - started
                aborted_model_seconds = den.model_seconds if den is not None else 0.0
                _remember_protection(model_wrap)
                continue
            self.report = report
            self.params["grad_mode"] = report.as_dict()
            self.params["derivatives"] = derivative_path(report, aborted)
            if self.record is not None:
                self.record.params["grad_mode"] = report.as_dict()
                self.record.params["derivatives"] = self.params["derivatives"]
                if aborted is not None and self.record.steps:
                    self.record.seconds += aborted_seconds       # the time, like the evaluations, of both attempts
                    self.record.model_seconds += aborted_model_seconds
                    first = self.record.steps[0]
                    first.forward_evals += aborted[0]
                    first.backward_evals += aborted[1]
                    first.note = (first.note + "; " if first.note else "") + (
                        f"includes {aborted[0]:g} forward / {aborted[1]:g} backward evaluations of an attempt "
                        "aborted by the host's in-place update, retried with saved-activation copies")
            return out
        raise AssertionError("unreachable")


# Models whose blocks update saved activations in place: the next solve starts with the copies instead of paying for
# an aborted attempt again (weakly held: a model that is unloaded is forgotten).
_PROTECT = weakref.WeakSet()


def _needs_protection(model_wrap) -> bool:
    return any(m in _PROTECT for m in _modules(model_wrap))


def _remember_protection(model_wrap) -> None:
    for m in _modules(model_wrap):
        _PROTECT.add(m)


def derivative_path(report: GradModeReport, aborted: Optional[tuple[float, float]]) -> str:
    """One line for the report: how gradients through the model were obtained, and what that cost."""
    words = "reverse-mode autograd through the model"
    if report.cloned_tensors:
        words += f", weights copied out of inference mode (+{report.extra_bytes / 2 ** 20:.1f} MiB)"
    if report.protect_saved:
        words += (f", saved activations copied ({report.saved_copies} tensors, "
                  f"{report.saved_copy_bytes / 2 ** 20:.1f} MiB in all) because the host updates them in place")
    if aborted is not None:
        words += f"; a first attempt without copies was aborted after {aborted[0]:g} forward evaluations (counted)"
    return words
