"""Cheap content fingerprints of tensors and of structures holding them (weight patches, conditioning, weights).

A replay reconstructs only with the network and the guidance the inversion used. Keys, strengths and shapes cannot
tell two LoRA files of the same rank, two checkpoints of one architecture or two prompts apart; their values can.
Reducing whole tensors on every call would cost a pass over the model's weights, so a tensor is summarised by a fixed
strided sample of at most ``SAMPLE`` of its values: its shape, dtype, and the float64 sum of the sample and of its
absolute values. The sample is taken where the tensor lives and summed on the CPU in float64, so the same values give
the same numbers on every call and device up to float64 rounding; a dtype cast (bf16 <-> fp32 ...) moves each value by
at most half its dtype's epsilon, which ``matches`` allows for.
"""
from __future__ import annotations

import enum
import math
from typing import Any, Callable, NamedTuple, Optional

import torch

SAMPLE = 256        # values read per tensor
MAX_DEPTH = 8       # nesting followed into containers (patch tuples, conditioning dicts, data objects)


class TensorPrint(NamedTuple):
    shape: tuple
    dtype: str
    total: float       # float64 sum of the sampled values
    magnitude: float   # float64 sum of their absolute values (the scale a difference of ``total`` is judged at)


def _strided_sample(t: torch.Tensor) -> torch.Tensor:
    """At most SAMPLE values of ``t`` at a fixed stride over its flat index, without copying the whole tensor.

    Gathered, not viewed: a view of a weight the host made under inference mode and then moved (a compiled network
    loaded on a GPU, PyTorch 2.11) raised "Inference tensors do not track version counter", which read as unreadable
    weights and skipped the replay's checkpoint check."""
    n = t.numel()
    step = max(1, -(-n // SAMPLE))
    idx = torch.arange(0, n, step, device=t.device)
    try:
        return torch.take(t, idx)             # row-major flat indices, contiguous or not
    except (RuntimeError, NotImplementedError):   # a dtype take lacks (float8 weights: "take_cpu" not implemented)
        return t[torch.unravel_index(idx, t.shape)]


def tensor_prints(tensors: list) -> Optional[list]:
    """TensorPrint of each tensor; None when one cannot be read (a meta tensor, a quantised tensor type that does not
    index like a tensor), so that callers skip a comparison rather than warn about an unreadable value."""
    if not tensors:
        return []
    try:
        if any(t.is_meta for t in tensors):
            return None
        with torch.no_grad():
            picks = [_strided_sample(t.detach()) for t in tensors]
            # one transfer per device and dtype, one reduction for all (a LoRA patches hundreds of keys: per-tensor
            # transfers and sums cost more than the sampling)
            groups: dict = {}
            for i, p in enumerate(picks):
                groups.setdefault((p.device, p.dtype), []).append(i)
            order, parts = [], []
            for idx in groups.values():
                order += idx
                parts.append(torch.cat([picks[i] for i in idx]).to(torch.float32).cpu())
            values = torch.cat(parts).double()
            # on the CPU: the sampled values were brought here, one transfer per device
            lengths = torch.tensor([picks[i].numel() for i in order])
            segment = torch.repeat_interleave(torch.arange(len(order)), lengths)  # on the CPU, like values
            totals = torch.zeros(len(order), dtype=torch.float64).index_add_(  # on the CPU, like values
                0, segment, values).tolist()
            magnitudes = torch.zeros(len(order), dtype=torch.float64).index_add_(  # on the CPU, like values
                0, segment, values.abs()).tolist()
    except (RuntimeError, TypeError, NotImplementedError, ValueError):
        return None
    out: list = [None] * len(tensors)
    for j, i in enumerate(order):
        out[i] = TensorPrint(tuple(tensors[i].shape), str(tensors[i].dtype), totals[j], magnitudes[j])
    return out


def _walk(obj: Any, on_tensor: Callable[[torch.Tensor], Any], depth: int = 0) -> Any:
    """``obj`` with every tensor replaced by ``on_tensor(tensor)``, containers as tuples (dicts as sorted (key, value)
    pairs), numbers, strings and None kept, an enum member by its class and name. An object carrying its tensors in
    ``weights`` (the host's weight adapters) is followed into them; any other object that only carries data (a
    CLIP-vision output in an unCLIP or Wan image-to-video conditioning, a future host's plain record) into its public
    attributes (_data_attributes), so that two such objects holding other tensors differ: compared by type alone,
    the conditioning of another image read as the inversion's. Anything else is reduced to its type name (a module,
    a function, an object holding a network, one with no attribute dict): its identity would differ between calls that
    mean the same thing, and walking a network's parameters would cost a pass over the model."""
    if isinstance(obj, torch.Tensor):
        return on_tensor(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return f"<{type(obj).__name__}.{obj.name}>"
    if depth >= MAX_DEPTH:
        return f"<{type(obj).__name__}>"
    if isinstance(obj, dict):
        return tuple((str(k), _walk(obj[k], on_tensor, depth + 1)) for k in sorted(obj, key=str))
    if isinstance(obj, (list, tuple)):
        return tuple(_walk(v, on_tensor, depth + 1) for v in obj)
    weights = getattr(obj, "weights", None)
    if isinstance(weights, (list, tuple)):
        return (f"<{type(obj).__name__}>", _walk(weights, on_tensor, depth + 1))
    data = _data_attributes(obj)
    if data is not None:
        return (f"<{type(obj).__name__}>", _walk(data, on_tensor, depth + 1))
    return f"<{type(obj).__name__}>"


def _data_attributes(obj: Any) -> Optional[dict]:
    """The public attributes of an object that only carries data, without its callables (bound functions, hooks);
    None for a callable object (a function, a class, a module), one without an attribute dict, and one directly holding
    a network (a ControlNet, a CLIP, a ModelPatcher: their identity is the network, which the fingerprint does not
    read; compared by type, as before)."""
    if callable(obj) or isinstance(obj, torch.nn.Module):
        return None
    try:
        attrs = vars(obj)
    except TypeError:          # __slots__, a builtin without __dict__
        return None
    if not isinstance(attrs, dict):
        return None
    out = {}
    for k, v in attrs.items():
        if not isinstance(k, str) or k.startswith("_"):
            continue
        if isinstance(v, torch.nn.Module):
            return None
        if callable(v):
            continue
        out[k] = v
    return out


def fingerprint(obj: Any) -> Any:
    """The fingerprint of ``obj`` (a tensor, or containers of tensors and plain values; see _walk), or None when one
    of its tensors cannot be read. Compare two with ``matches``."""
    tensors: list = []
    _walk(obj, lambda t: tensors.append(t))
    prints = tensor_prints(tensors)
    if prints is None:
        return None
    it = iter(prints)
    return _walk(obj, lambda t: next(it))


def _close(a: TensorPrint, b: TensorPrint, rtol: float) -> bool:
    if tuple(a.shape) != tuple(b.shape):
        return False
    tol = rtol
    if a.dtype != b.dtype:
        # the same weights stored in another dtype: each sampled value moved by at most half the coarser dtype's
        # epsilon, so both sums by at most that share of the sum of magnitudes
        coarse = []
        for name in (a.dtype, b.dtype):
            dtype = getattr(torch, name.replace("torch.", ""), None)
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                return False     # an integer / quantised storage is not a cast of the other
            coarse.append(torch.finfo(dtype).eps)
        tol = max(rtol, max(coarse))
    scale = max(abs(a.magnitude), abs(b.magnitude))
    return abs(a.total - b.total) <= tol * scale and abs(a.magnitude - b.magnitude) <= tol * scale


def matches(a: Any, b: Any, rtol: float = 1e-6) -> bool:
    """Whether two fingerprints describe the same contents: plain values equal, tensors of one shape whose sums agree
    within ``rtol`` of their magnitude (more across dtypes: see _close). The default absorbs only float64 rounding;
    callers comparing values recomputed by a network (conditioning) pass a looser ``rtol``."""
    if isinstance(a, TensorPrint) or isinstance(b, TensorPrint):
        return isinstance(a, TensorPrint) and isinstance(b, TensorPrint) and _close(a, b, rtol)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(matches(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b
