"""Assembling the source and the edit branch into one batch."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def concat_tokens(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate along the batch; token sequences of different lengths are repeated to their least common multiple
    (what the host does for cond/uncond of different lengths: attention over a sequence repeated r times equals
    attention over the sequence, so nothing changes)."""
    if all(t.ndim < 3 for t in tensors) or len({t.shape[1] for t in tensors}) == 1:
        return torch.cat(list(tensors))
    length = 1
    for t in tensors:
        length = length * t.shape[1] // math.gcd(length, t.shape[1])
    return torch.cat([t.repeat(1, length // t.shape[1], *([1] * (t.ndim - 2))) for t in tensors])


def token_period(t: Tensor) -> int:
    """The length of the token sequence a [B, L, ...] conditioning repeats: the smallest divisor p of L with
    t[:, j] = t[:, j + p] for every j. The host (and concat_tokens) repeats a prompt to the least common multiple of
    the lengths batched with it, so this is the prompt's own length; an encoder's rows for one prompt do not repeat
    exactly (positions differ), so a shorter period means the rows were repeated."""
    length = t.shape[1]
    for p in range(1, length):
        if length % p == 0 and torch.equal(t[:, p:], t[:, :length - p]):
            return p
    return length


def repeat_chunks(x: Tensor, chunks: int) -> Tensor:
    """[b, ...] → [chunks·b, ...]: the same rows once per cond/uncond chunk."""
    return x.repeat(chunks, *([1] * (x.ndim - 1)))
