"""Input edge cases that used to pass silently with a wrong result, on the host's real architectures at a tiny size
(tests/architectures.py) through the host's executor: an inverted latent that is no noise (BDIA's (1/gamma)^T growth
at many steps), and an all-zero latent on a latent format with a shift (the host's guider does not shift it in).

Numbers in the comments were measured on this code (``pytest -s`` prints them)."""
from __future__ import annotations

import torch

from test_architectures import add_invert, base, run, scheduler
from test_editing_host import warnings_of

NOT_NOISE = "it is not noise"


def bdia_prompt(family: str, steps: int, gamma: float | None) -> dict:
    """BDIA Invert + replay; ``gamma`` None: the node's default (auto)."""
    prompt = add_invert(base(family), family, "BDIAInvert", {} if gamma is None else {"gamma": gamma})
    prompt["invert"]["inputs"]["steps"] = steps
    return prompt


def top_ratio(out) -> float:
    """RMS of the inverted top over that of a noisy latent at its level (image + unit noise, sigma space)."""
    entry = out["invert"][0]["inversion"]
    x0, top, sigma = entry["states"][0], entry["states"][-1], float(entry["sigmas"][0])
    return (top.pow(2).mean().sqrt() / (x0.pow(2).mean() + sigma ** 2).sqrt()).item()


def test_bdia_inversion_that_blows_up_at_many_steps_is_warned(caplog):
    """BDIA's inversion divides by gamma at every step: at gamma 0.7 (the default before "auto") and 50 steps (the
    node's default steps) the inverted latent is ~1000x the noise level on the tiny SD2-v model (5.7e5x on the EPS
    reference model) while its own replay is still exact, so nothing else showed that edits from it fail."""
    out = run("sd2v", bdia_prompt("sd2v", 50, 0.7))
    ratio = top_ratio(out)
    print(f"[input edges] sd2v BDIA gamma 0.7 T=50: top / noise RMS {ratio:.3g}")
    assert ratio > 100.0          # measured 1.06e3
    said = warnings_of(caplog, NOT_NOISE)
    assert len(said) == 1 and "(1/gamma)^T" in said[0] and "gamma 0.7, T = 50" in said[0], said
    assert any(NOT_NOISE in w for w in out["invert"][0]["inversion"]["warnings"])   # the Inversion Report shows it
    x0 = out["latent"][0]["samples"]
    assert torch.equal(out["replay"][0]["samples"], x0) or (out["replay"][0]["samples"] - x0).abs().max() < 1e-4


def test_a_noise_like_inverted_latent_is_not_warned(caplog):
    """No false alarm: gamma 0.9 at the same 50 steps, and Exact Invert there, stay at the noise level (1.03x / 1.06x)."""
    out = run("sd2v", bdia_prompt("sd2v", 50, 0.9))
    exact = add_invert(base("sd2v"), "sd2v", "ExactInvert", node="exact", replay="exact_replay")
    exact["exact"]["inputs"]["steps"] = 50
    out_exact = run("sd2v", exact, outputs=["exact"])
    ratios = (top_ratio(out), top_ratio({"invert": out_exact["exact"]}))
    print(f"[input edges] sd2v T=50 top / noise RMS: BDIA gamma 0.9 {ratios[0]:.3g}, Exact {ratios[1]:.3g}")
    assert max(ratios) < 3.0, ratios            # measured 1.03 / 1.06
    assert warnings_of(caplog, NOT_NOISE) == []


def test_bdia_default_gamma_at_the_default_50_steps_is_noise(caplog):
    """The node's default gamma (auto: 0.7^(10/50) = 0.931 at 50 steps) keeps the inverted latent at the noise level
    where a fixed 0.7 was ~1000x on this model: no warning, and the replay is still exact."""
    out = run("sd2v", bdia_prompt("sd2v", 50, None))
    entry = out["invert"][0]["inversion"]
    ratio = top_ratio(out)
    print(f"[input edges] sd2v BDIA gamma auto ({entry['params']['gamma']:.4f}) T=50: top / noise RMS {ratio:.3g}")
    assert abs(entry["params"]["gamma"] - 0.7 ** 0.2) < 1e-12 and entry["params"]["gamma_auto"]
    assert ratio < 3.0
    assert warnings_of(caplog, NOT_NOISE) == [] and not any(NOT_NOISE in w for w in entry["warnings"])
    x0 = out["latent"][0]["samples"]
    assert torch.equal(out["replay"][0]["samples"], x0) or (out["replay"][0]["samples"] - x0).abs().max() < 1e-4


def test_an_all_zero_latent_round_trips_on_a_latent_format_with_a_shift(caplog):
    """SD3's latent format shifts by 0.0609. The host's guider leaves an all-zero (empty) latent unshifted but shifts
    the sampler's output back, so the replay of its inversion returned 0.0609 on average (max 0.071) instead of the zeros; now the
    inversion converts it (measured max |replay| 0.0097) and says that an empty latent is no image."""
    prompt = base("sd3")
    prompt["zeros"] = {"class_type": "LatentMultiply", "inputs": {"samples": ["latent", 0], "multiplier": 0.0}}
    prompt = add_invert(prompt, "sd3", "ExactInvert")
    prompt["invert"]["inputs"]["latent"] = ["zeros", 0]
    out = run("sd3", prompt)
    assert not out["zeros"][0]["samples"].any()
    back = out["replay"][0]["samples"]
    print(f"[input edges] sd3 all-zero latent: max |replay| {back.abs().max().item():.3g}, "
          f"mean {back.mean().item():.3g} (scheduler {scheduler('sd3')})")
    assert back.abs().max().item() < 0.03, back.abs().max()      # was 0.0707 (0.0609 on average: the shift)
    assert abs(back.mean().item()) < 0.005
    assert len(warnings_of(caplog, "the latent is all zeros")) == 1
