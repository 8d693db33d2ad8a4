"""What the pack reads of the host itself: which kind of model it samples (EPS, v, EDM, flow), and how a message
reaches the user (the console and a toast on the page), with the sentence every message about a missing or changed
host internal ends with."""
from __future__ import annotations

import logging

import comfy.model_sampling

from .page import show_in_ui


# most specific first (V_PREDICTION subclasses EPS). COSMOS_RFLOW (Cosmos Predict2, upstream only) is a rectified
# flow fed through EDM's sigma space: its noise_scaling is x = x0 + σε, as EPS / V / EDM
MODEL_KINDS = ("CONST", "COSMOS_RFLOW", "EDM", "V_PREDICTION", "EPS")
log = logging.getLogger("comfyui-inversion")


def warn(message: str) -> None:
    """A warning the user sees in the ComfyUI console and, as a toast naming the node, on the page (page.py; the
    host shows node errors in the UI itself, warnings only in its log)."""
    log.warning("[comfyui-inversion] %s", message)
    show_in_ui(message)


TESTED_HOSTS = "ComfyUI 0.3.64 and the PyPI fork comfyui 0.0.1"


def unsupported_host(what: str) -> str:
    """The sentence every error or warning about a missing or changed host internal ends with."""
    return (f"This ComfyUI version is not supported for {what} (tested on {TESTED_HOSTS}); please report it with "
            "your ComfyUI version")


def model_kind(model_sampling) -> str:
    """EPS / V_PREDICTION / EDM / COSMOS_RFLOW / CONST for the host's model_sampling object (its class is built
    dynamically)."""
    ms = model_sampling
    for name in MODEL_KINDS:
        # getattr: COSMOS_RFLOW is upstream's only (the PyPI fork has none)
        cls = getattr(comfy.model_sampling, name, None)
        if cls is not None and isinstance(ms, cls):
            return name
    # a kind the pack does not know (or a host that renamed one: CONST gone would make a flow model this) is not
    # sampled wrongly (the host's own denoiser is used) but "auto" picks karras and the flow checks do not apply
    absent = [name for name in MODEL_KINDS if name != "COSMOS_RFLOW" and not hasattr(comfy.model_sampling, name)]
    warn(f"model: it samples as {'/'.join(c.__name__ for c in type(ms).__bases__)}, none "
         f"of the kinds the pack knows ({', '.join(MODEL_KINDS)} of comfy.model_sampling"
         + (f"; this ComfyUI has no {', '.join(absent)}" if absent else "") + "): the 'auto' scheduler takes karras, "
         "GNRI / PreciseInv refuse it, and a flow model's checks (sigmas above 1) and noise figures do not apply. "
         + unsupported_host("this model's sampling"))
    return type(ms).__name__
