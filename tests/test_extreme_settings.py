"""Extreme but legitimate settings on the host's real architectures at a tiny size (tests/architectures.py), through
the host's executor: many steps.

Numbers in the comments were measured on this code (``pytest -s`` prints them)."""
from __future__ import annotations

from test_architectures import add_invert, base, psnr, run
from test_editing_host import warnings_of

MANY_STEPS = "reconstructs worse than plain"


def test_easyinv_at_the_default_50_steps_warns_that_ddim_does_better(caplog):
    """EasyInv at the nodes' default 50 steps: on tiny SD3 its replay is 36.9 dB against DDIM Invert's 60.0 (on the
    trained reference models 34.6 vs 40.2 EPS, 29.2 vs 36.2 flow), which nothing said. Now the node warns, and the
    Inversion Report carries it; DDIM Invert does not warn."""
    prompt = add_invert(base("sd3"), "sd3", "EasyInvInvert", node="easy", replay="easy_replay")
    prompt = add_invert(prompt, "sd3", "DDIMInvert", node="ddim", replay="ddim_replay")
    for node in ("easy", "ddim"):
        prompt[node]["inputs"]["steps"] = 50
    out = run("sd3", prompt)
    x0 = out["latent"][0]["samples"]
    easy, ddim = psnr(out["easy_replay"][0]["samples"], x0), psnr(out["ddim_replay"][0]["samples"], x0)
    print(f"[extreme] sd3 T=50: EasyInv {easy:.1f} dB, DDIM {ddim:.1f} dB")
    assert easy < ddim - 10.0                       # measured 36.9 / 60.0
    said = warnings_of(caplog, MANY_STEPS)
    assert len(said) == 1 and "easyinv" in said[0] and "blended 10 of 50 steps" in said[0], said
    assert any(MANY_STEPS in w for w in out["easy"][0]["inversion"]["warnings"])
    assert not any(MANY_STEPS in w for w in out["ddim"][0]["inversion"]["warnings"])
