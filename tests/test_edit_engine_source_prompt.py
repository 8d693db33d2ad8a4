"""Inversion Edit Engine: a source_conditioning that is not the inversion's positive is warned, once, and what it costs
is real (the bundled reference model through the host's executor; the full measurement is
scripts/edit_source_prompt.py)."""
from __future__ import annotations

import json
import math
import sys

import torch

import host
from test_editing_host import warnings_of
from workflow_format import ui_to_api

WARNING = "source_conditioning: it differs from the positive conditioning this latent was inverted with"


def reference_prompt() -> dict:
    """workflows/reference_edit_engine_pnp.json as an API prompt (00_cat, "cat" inverted with Exact Invert at T=10,
    pnp + features 0-0.3, edit "astronaut" at cfg 3), without its preview / save nodes, plus CLIPTextEncode nodes for
    the other sources: "again" encodes the source text a second time, "other" another word of the vocabulary."""
    defs = host.engine().nodes.NODE_CLASS_MAPPINGS
    path = host.PACK_ROOT / "workflows" / "reference_edit_engine_pnp.json"
    api = {k: v for k, v in ui_to_api(json.loads(path.read_text("utf-8")), defs).items()
           if v["class_type"] not in ("PreviewImage", "SaveImage")}
    assert api["3"]["inputs"]["text"] == "cat" and api["12"]["class_type"] == "InversionEditEngine"
    api["again"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "cat", "clip": ["2", 1]}}
    api["other"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "coffee", "clip": ["2", 1]}}
    return api


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / (a - b).double().pow(2).mean().item())


def run(api: dict, source: str, caplog):
    api["12"]["inputs"]["source_conditioning"] = [source, 0]
    caplog.clear()
    out = host.run_workflow(api)
    return out["14"][0], out["10"][0], warnings_of(caplog, WARNING)


def test_a_source_prompt_that_is_not_the_inversions_is_warned_once_and_costs_the_reconstruction(caplog):
    """With the inversion's own prompt as the edit prompt at the inversion's cfg, the engine with the right source
    changes nothing (its features are the edit branch's own): the plain replay, the image back. Another node encoding
    the same text is the same conditioning. Another prompt as the source is warned once, and the same graph no longer
    gives the image back (measured on this image: 60.5 dB with the right source, 20.9 with "coffee"; benchmark's
    schedule, 8 images: 49.6 vs 32.2)."""
    api = reference_prompt()
    for node in ("9", "13"):
        api[node]["inputs"].update(positive=["3", 0], cfg=1.0)
    original = host.run_workflow({"6": api["6"]})["6"][0]
    right, plain, said = run(api, "3", caplog)
    assert said == [], warnings_of(caplog)
    assert psnr(right, plain) > 80 and psnr(right, original) > 45, (psnr(right, plain), psnr(right, original))
    again, _, said = run(api, "again", caplog)
    assert said == [], warnings_of(caplog)
    assert torch.equal(again, right)
    wrong, _, said = run(api, "other", caplog)
    assert len(said) == 1, warnings_of(caplog)
    assert psnr(wrong, original) < 30, (psnr(wrong, original), psnr(right, original))


def test_the_edit_with_another_source_keeps_less_of_the_image(caplog):
    """The shipped graph's edit ("astronaut" at cfg 3): with the inversion's prompt as source, pnp + features keeps
    the image's layout; with the edit prompt wired to the source too (the likely wiring mistake) it keeps less."""
    api = reference_prompt()
    original = host.run_workflow({"6": api["6"]})["6"][0]
    right, plain, said = run(api, "3", caplog)
    assert said == []
    wrong, _, said = run(api, "5", caplog)
    assert len(said) == 1, warnings_of(caplog)
    # measured: PSNR to the source image 16.7 dB (right source) / 11.0 (edit prompt as source) / 11.1 (plain replay)
    assert psnr(wrong, original) < psnr(right, original) - 3, (psnr(wrong, original), psnr(right, original))


def test_an_unconditional_inversion_takes_a_description_as_source_unwarned(caplog):
    """Inverted with the empty prompt as positive and negative (two separate empty CLIPTextEncode nodes, compared by
    value), no prompt made the trajectory; the image's description as the source is meant (measured better than the
    empty prompt itself, scripts/edit_source_prompt.py) and not warned."""
    api = reference_prompt()
    api["3"]["inputs"]["text"] = ""
    api["again"]["inputs"]["text"] = "cat"
    _, _, said = run(api, "again", caplog)
    assert said == [], warnings_of(caplog)


def test_a_source_branch_that_never_runs_and_a_record_that_does_not_say_are_not_warned(caplog):
    """An empty window runs no source branch (the prompt changes nothing). A record without positive_is_negative
    (made before it was recorded) or without guidance cannot tell: silent rather than a false alarm."""
    api = reference_prompt()
    api["12"]["inputs"].update(window_start=0.5, window_end=0.5)
    _, _, said = run(api, "other", caplog)
    assert said == [], warnings_of(caplog)
    edit = sys.modules[f"{host.PACK_DIR_NAME}.nodes.edit"]
    bridge = sys.modules[f"{host.PACK_DIR_NAME}.nodes.bridge"]
    out = host.run_workflow({k: api[k] for k in ("2", "3", "4", "6", "7", "8", "other")})
    model, inverted, other = out["2"][0], out["8"][0], out["other"][0]
    entry = inverted[bridge.LATENT_KEY]
    older = dict(entry["guidance"])
    del older["positive_is_negative"]
    for guidance in (entry["guidance"], older, {}):
        latent = dict(inverted, **{bridge.LATENT_KEY: dict(entry, guidance=guidance)})
        caplog.clear()
        with torch.inference_mode():
            edit.build_engine_patch(model, latent, other, "pnp", window_start=0.0, window_end=0.3)
        assert len(warnings_of(caplog, WARNING)) == (guidance is entry["guidance"]), warnings_of(caplog)
