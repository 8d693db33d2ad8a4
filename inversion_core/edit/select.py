"""Modes, presets, injection windows (fractions of the schedule) and layer selection for the edit engine.

Layers are named ``<kind>.<block>.<index>``: for UNets the host's blocks (``input.5.0``, ``middle.0.0``,
``output.3.1`` = output block 3, its second transformer), for DiTs ``joint.<i>.0`` (SD3) or ``double.<i>.0`` /
``single.<i>.0`` (Flux's double and single stream blocks). A selection is a comma list of
``all``, ``none``, ``encoder`` (= ``input``), ``middle``, ``decoder`` (= ``output``), ``joint``, ``double``,
``single``, ``<kind>.<a>``,
``<kind>.<a>-<b>`` (blocks a … b inclusive), ``<kind>.<a>-`` (a onwards), or a full layer name.

Windows: step k of a T-step replay (k = 0 is the noisiest) is inside [start, end) when start·T ≤ k < end·T. Few-step
models need fractions: a window of 0.5 is two steps of four and 25 of 50.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

MODES = ("pnp", "masactrl", "p2p", "dit_kv")
MODE_HELP = {
    "pnp": "PnP: the source's self-attention queries+keys (its attention map) in the decoder, optionally its "
           "decoder features; keeps layout and shape, lets appearance follow the prompt.",
    "masactrl": "MasaCtrl: the edit's queries read the source's self-attention keys+values from a step on; keeps "
                "identity and texture, lets pose/layout follow the prompt.",
    "p2p": "Prompt-to-Prompt: the source's cross-attention maps with the edit prompt's words (word swap), optional "
           "re-weighting of chosen tokens, and the source's self-attention map early on.",
    "dit_kv": "DiT (SD3 MMDiT, Flux): the source's keys+values for the image tokens of the joint blocks (Flux: "
              "the double and single stream blocks).",
}

# default windows per mode: (start, end) as fractions of the schedule
DEFAULT_WINDOWS = {
    "pnp": (0.0, 0.5),        # PnP: attention injection τ_A = 0.5 (features τ_f = 0.8, below)
    "masactrl": (0.08, 1.0),  # MasaCtrl: from step 4 of 50 on
    "p2p": (0.0, 0.8),        # P2P: cross-attention replaced for 80 % of the steps (self-attention for half of that)
    "dit_kv": (0.0, 0.5),
}
PNP_FEATURE_WINDOW_RATIO = 0.8 / 0.5   # PnP injects features over τ_f / τ_A = 1.6 × the attention window

# default self-attention layers per model family (the keys are the host latent formats' names)
FAMILY_LAYERS = {
    "SD15": {"pnp": "output.4-11", "masactrl": "output.6-11", "p2p": "decoder"},   # SD1.x and SD2.x
    "SDXL": {"pnp": "decoder", "masactrl": "output.0-2", "p2p": "decoder"},
    "SD3": {"dit_kv": "joint"},
}
DEFAULT_LAYERS = {"pnp": "decoder", "masactrl": "decoder", "p2p": "decoder", "dit_kv": "all"}   # dit_kv: every block
# PnP feature injection: the decoder features entering this output block
FAMILY_RESIDUAL_BLOCK = {"SD15": 4, "SDXL": 3}
DEFAULT_RESIDUAL_BLOCK = 1

LayerName = tuple  # (kind, block, index)


def layer_name(layer: LayerName) -> str:
    return f"{layer[0]}.{layer[1]}.{layer[2]}"


_ALIASES = {"encoder": "input", "decoder": "output", "input": "input", "output": "output", "middle": "middle",
            "joint": "joint", "double": "double", "single": "single"}


def parse_layers(spec: str, available: Sequence[LayerName], what: str = "layers") -> frozenset:
    """The layers of ``available`` that ``spec`` selects; an unknown or empty-matching term is an error naming the
    layers there are."""
    chosen: set = set()
    terms = [t for t in re.split(r"[,\s]+", spec.strip().lower()) if t]
    names = ", ".join(layer_name(a) for a in available) or "(none)"
    for term in terms:
        if term == "all":
            chosen.update(available)
            continue
        if term == "none":
            continue
        m = re.fullmatch(r"([a-z]+)(?:\.(\d+)(-(\d*))?)?(?:\.(\d+))?", term)
        if not m or m.group(1) not in _ALIASES:
            raise ValueError(f"{what}: cannot read {term!r}; use all, none, encoder, middle, decoder, joint, double, "
                             "single, "
                             f"<kind>.<block>, <kind>.<a>-<b> or a layer name; this model has: {names}")
        kind = _ALIASES[m.group(1)]
        lo = int(m.group(2)) if m.group(2) is not None else None
        if m.group(3):
            hi = int(m.group(4)) if m.group(4) else None
        else:
            hi = lo
        index = int(m.group(5)) if m.group(5) is not None else None
        hits = [a for a in available if a[0] == kind and (lo is None or a[1] >= lo) and (hi is None or a[1] <= hi)
                and (index is None or a[2] == index)]
        if not hits:
            raise ValueError(f"{what}: {term!r} selects no attention layer of this model; it has: {names}")
        chosen.update(hits)
    return frozenset(chosen)


def window_steps(total: int, start: float, end: float) -> list[bool]:
    """Per replay step k (0 = noisiest): inside [start, end) as fractions of the schedule."""
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"window: start and end must be fractions in [0, 1], got {start}, {end}")
    eps = 1e-9
    return [start * total - eps <= k < end * total - eps for k in range(total)]


def find_step(sigma: float, schedule: Sequence[float]) -> Optional[int]:
    """Index k of ``sigma`` in the descending stored schedule (levels 0 … T−1 are the ones a replay evaluates), or
    None when it is not on it."""
    for k, s in enumerate(schedule[:-1] if len(schedule) > 1 else schedule):
        if abs(sigma - s) <= 1e-4 * max(abs(s), 1e-3):
            return k
    return None


@dataclass(frozen=True)
class EditSettings:
    """Everything the engine decides per step and layer, resolved for one model and one schedule."""

    mode: str
    total: int
    self_layers: frozenset            # layers whose self-attention takes the source's q/k/v (per mode)
    self_steps: tuple                 # per step: self-attention injection on
    use_q: bool
    use_k: bool
    use_v: bool
    strength: float
    cross_steps: tuple = ()           # per step: P2P cross-attention control on
    swap: bool = False
    reweight: float = 1.0
    tokens: tuple = ()
    residual_block: Optional[int] = None
    residual_steps: tuple = ()
    mask_layers: frozenset = frozenset()   # with a mask: layers whose keys/values outside it are the source's
    mask_steps: tuple = ()                 # … at these steps (the mode's window)
    window: tuple = (0.0, 0.0)
    notes: tuple = field(default=())

    def any_step(self, k: int) -> bool:
        """Does step k need the source branch at all? (Outside every window the engine costs nothing.)"""
        return bool((self.self_steps and self.self_layers and self.self_steps[k]) or (self.cross_steps and self.cross_steps[k])
                    or (self.residual_steps and self.residual_steps[k])
                    or (self.mask_layers and self.mask_steps and self.mask_steps[k]))

    @property
    def active_steps(self) -> int:
        return sum(self.any_step(k) for k in range(self.total))


def _parse_tokens(text: str) -> tuple:
    out = []
    for t in re.split(r"[,\s]+", text.strip()):
        if not t:
            continue
        if not t.isdigit():
            raise ValueError("tokens: expected comma-separated token positions (CLIP: 0 = the start token, 1 = the "
                             f"first word), got {text!r}")
        out.append(int(t))
    return tuple(out)


def resolve_settings(mode: str, family: str, total: int, available: Sequence[LayerName], *,
                     window_start: float = -1.0, window_end: float = -1.0, layers: str = "auto",
                     strength: float = 1.0, residual: bool = False, reweight: float = 1.0, tokens: str = "",
                     masked: bool = False, dit: bool = False) -> EditSettings:
    """Presets per mode and family, overridden by the user's knobs (−1 / "auto" = the preset)."""
    if mode not in MODES:
        raise ValueError(f"mode: unknown mode {mode!r}; one of {MODES}")
    if dit != (mode == "dit_kv"):
        raise ValueError(f"mode: {mode!r} is for {'UNet' if mode != 'dit_kv' else 'DiT'} models but this model is a "
                         f"{'DiT' if dit else 'UNet'}; use {'dit_kv' if dit else 'pnp, masactrl or p2p'}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength: must be in [0, 1], got {strength}")
    if reweight < 0:
        raise ValueError(f"reweight: must be >= 0, got {reweight}")
    d_start, d_end = DEFAULT_WINDOWS[mode]
    start = d_start if window_start < 0 else float(window_start)
    end = d_end if window_end < 0 else float(window_end)
    steps = window_steps(total, start, end)
    empty = tuple(False for _ in range(total))
    spec = layers.strip() if layers and layers.strip().lower() != "auto" else \
        FAMILY_LAYERS.get(family, {}).get(mode, DEFAULT_LAYERS[mode])
    self_layers = parse_layers(spec, available)
    self_kinds = [a for a in available if a[0] != "joint"] if not dit else list(available)
    kw = dict(mode=mode, total=total, strength=float(strength), window=(start, end),
              mask_layers=frozenset(self_kinds) if masked else frozenset(), mask_steps=tuple(steps))
    if strength == 0.0:
        # nothing moves towards the source: no injection at all, so the steps take the host's own path and the replay
        # is the plain one bit for bit (through the source branch it differed by float rounding, 1e-5). A mask's
        # keys / values outside it and P2P re-weighting do not scale with strength and stay
        cross = tuple(steps) if mode == "p2p" and float(reweight) != 1.0 else ()
        return EditSettings(self_layers=frozenset(), self_steps=tuple(empty), use_q=False, use_k=False, use_v=False,
                            cross_steps=cross, swap=False, reweight=float(reweight),
                            tokens=_parse_tokens(tokens) if mode == "p2p" else (), **kw)
    if mode == "pnp":
        res_steps = window_steps(total, start, min(1.0, start + (end - start) * PNP_FEATURE_WINDOW_RATIO)) \
            if residual else list(empty)
        block = FAMILY_RESIDUAL_BLOCK.get(family, DEFAULT_RESIDUAL_BLOCK) if residual else None
        return EditSettings(self_layers=self_layers, self_steps=tuple(steps), use_q=True, use_k=True, use_v=False,
                            residual_block=block, residual_steps=tuple(res_steps), **kw)
    if mode in ("masactrl", "dit_kv"):
        return EditSettings(self_layers=self_layers, self_steps=tuple(steps), use_q=False, use_k=True, use_v=True,
                            **kw)
    # p2p: cross-attention over the window, the source's self-attention map over its first half
    self_steps = window_steps(total, start, start + (end - start) / 2.0)
    return EditSettings(self_layers=self_layers, self_steps=tuple(self_steps), use_q=True, use_k=True, use_v=False,
                        cross_steps=tuple(steps), swap=True, reweight=float(reweight), tokens=_parse_tokens(tokens),
                        **kw)
