"""Structure-preserving edits on the stored inversion trajectory: the pure-torch pieces (no host imports).

* ``attention``: the edit branch's queries/keys/values with the source branch's injected (PnP, MasaCtrl, KV-Edit
  masks) and Prompt-to-Prompt cross-attention with explicit maps (word swap, re-weighting);
* ``select``: modes and their presets, injection windows as fractions of the schedule, layer selection, the mapping
  from a sigma to the stored schedule's step;
* ``batch``: assembling the source and edit branches into one batch (token padding as the host does it);
* ``metrics``: self-similarity structure distance, masked (background) PSNR, the diffusion-classifier margin.

The host wiring (ModelPatcher patches) lives in ``nodes/edit.py``.
"""
from .attention import (attention_from_probs, attention_probs, inject_self_attention, p2p_cross_attention,
                        token_mask_for_layer)
from .batch import concat_tokens, repeat_chunks, token_period
from .metrics import (background_psnr, classifier_errors, patch_features, self_similarity, structure_distance)
from .select import (FAMILY_LAYERS, MODES, EditSettings, find_step, parse_layers, resolve_settings, window_steps)

__all__ = [
    "attention_from_probs", "attention_probs", "inject_self_attention", "p2p_cross_attention", "token_mask_for_layer",
    "concat_tokens", "repeat_chunks", "background_psnr", "classifier_errors", "patch_features", "self_similarity",
    "structure_distance", "FAMILY_LAYERS", "MODES", "EditSettings", "find_step", "parse_layers", "resolve_settings",
    "window_steps",
]
