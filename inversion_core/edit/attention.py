"""Attention with the source branch's features injected into the edit branch.

Shapes follow the host's attention layers: q, k, v are ``[n, tokens, heads * dim_head]`` (already projected), the
attention function is the host's own ``optimized_attention(q, k, v, heads)``, passed in, so a layer that injects
nothing computes exactly what the unpatched layer computes. Row ``i`` of the edit tensors pairs with row ``i`` of the
source tensors (same image, same cond/uncond chunk).

* **PnP** (Tumanyan et al. 2023): the edit branch's self-attention uses the source's queries and keys — the source's
  attention map — with its own values.
* **MasaCtrl** (Cao et al. 2023): the edit branch's queries attend to the source's keys and values.
* **KV-Edit mask** (Zhu et al. 2025): outside the mask (``keep`` = 0) the keys and values are the source's whatever
  the mode, so the region that must not change contributes to attention exactly what it contributed in the source.
* **Prompt-to-Prompt** (Hertz et al. 2022): cross-attention maps computed explicitly; word swap uses the source's map
  with the edit's values, re-weighting scales chosen token columns of the map.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

AttentionFn = Callable[..., Tensor]  # (q, k, v, heads) -> [n, tokens, heads * dim_head]


def _blend(edit: Tensor, src: Tensor, strength: float) -> Tensor:
    if strength >= 1.0:
        return src
    if strength <= 0.0:
        return edit
    return edit + strength * (src - edit)


def inject_self_attention(q_e: Tensor, k_e: Tensor, v_e: Tensor, q_s: Tensor, k_s: Tensor, v_s: Tensor, *,
                          use_q: bool, use_k: bool, use_v: bool, strength: float = 1.0,
                          keep: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """The edit branch's (q, k, v): each chosen one moved ``strength`` of the way to the source's.

    ``keep`` ([n or 1, tokens, 1], 1 = the edit may change this token): outside it the keys and values are the
    source's (KV-Edit), independently of the mode's choice.
    """
    q = _blend(q_e, q_s, strength) if use_q else q_e
    k = _blend(k_e, k_s, strength) if use_k else k_e
    v = _blend(v_e, v_s, strength) if use_v else v_e
    if keep is not None:
        keep = keep.to(dtype=k.dtype, device=k.device)
        k = keep * k + (1.0 - keep) * k_s
        v = keep * v + (1.0 - keep) * v_s
    return q, k, v


def token_mask_for_layer(mask: Tensor, tokens: int, n: int) -> Tensor:
    """A latent-resolution mask [b, 1, H, W] (1 = edit) → [n, tokens, 1] for a layer of ``tokens`` image tokens.

    The layer's grid is the latent grid downsampled by a power of two (UNet levels) or by the patch size (DiT), so
    it is found from the token count and the aspect ratio; the mask is area-averaged onto it. Rows repeat over the
    cond/uncond chunks (``n`` = chunks × b).
    """
    b, _, h, w = mask.shape
    gh = int(round((tokens * h / w) ** 0.5))
    gw = tokens // max(gh, 1)
    if gh * gw != tokens:
        raise ValueError(f"cannot map a {h}x{w} mask onto a layer of {tokens} tokens")
    m = torch.nn.functional.adaptive_avg_pool2d(mask.float(), (gh, gw)).reshape(b, tokens, 1)
    if n % b:
        raise ValueError(f"mask batch {b} does not divide the layer batch {n}")
    return m.repeat(n // b, 1, 1)


def attention_probs(q: Tensor, k: Tensor, heads: int) -> Tensor:
    """softmax(q kᵀ / √d) per head, in float32: [n, heads, Lq, Lk]."""
    n, lq, inner = q.shape
    d = inner // heads
    qh = q.float().reshape(n, lq, heads, d).transpose(1, 2)
    kh = k.float().reshape(n, k.shape[1], heads, d).transpose(1, 2)
    return torch.softmax(qh @ kh.transpose(-1, -2) * (d ** -0.5), dim=-1)


def attention_from_probs(p: Tensor, v: Tensor, heads: int) -> Tensor:
    """p [n, heads, Lq, Lk] applied to v [n, Lk, heads*d] → [n, Lq, heads*d] in v's dtype."""
    n, lk, inner = v.shape
    d = inner // heads
    vh = v.float().reshape(n, lk, heads, d).transpose(1, 2)
    out = (p @ vh).transpose(1, 2).reshape(n, p.shape[2], inner)
    return out.to(v.dtype)


def reweight_columns(tokens: int, indices: Sequence[int], period: Optional[int] = None) -> Tensor:
    """Boolean [tokens]: the key columns of the prompt tokens ``indices`` (repeated every ``period`` columns when the
    host repeated the prompt to match a longer one)."""
    period = period or tokens
    cols = torch.zeros(tokens, dtype=torch.bool)   # on the CPU: p2p_cross_attention moves it to the map's device
    for i in indices:
        if not 0 <= i < period:
            raise ValueError(f"token index {i} is outside the prompt's {period} tokens")
        cols[i::period] = True
    return cols


def p2p_cross_attention(q_e: Tensor, k_e: Tensor, v_e: Tensor, q_s: Optional[Tensor], k_s: Optional[Tensor],
                        heads: int, *, swap_strength: float = 0.0, reweight: float = 1.0,
                        columns: Optional[Tensor] = None) -> Tensor:
    """Prompt-to-Prompt cross-attention for the edit branch.

    The edit's map ``softmax(q_e k_eᵀ)`` moves ``swap_strength`` of the way to the source's ``softmax(q_s k_sᵀ)``
    (word swap: 1 = the source's layout with the edit's words), then the ``columns`` (prompt tokens) are scaled by
    ``reweight``; the result weights the edit's values. Source and edit prompts must have the same token count.
    """
    p = attention_probs(q_e, k_e, heads)
    if swap_strength > 0.0:
        if k_s is None or q_s is None or k_s.shape[1] != k_e.shape[1]:
            raise ValueError("Prompt-to-Prompt word swap needs source and edit prompts of the same token length")
        p = _blend(p, attention_probs(q_s, k_s, heads), swap_strength)
    if reweight != 1.0 and columns is not None:
        scale = torch.ones(p.shape[-1], dtype=p.dtype, device=p.device)
        scale[columns.to(p.device)] = float(reweight)
        p = p * scale
    return attention_from_probs(p, v_e, heads)
