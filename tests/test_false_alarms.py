"""Warnings that must not claim what is not so in ordinary use (the checks added for the SAMPLER twins and the
registry of inversions), through the host's executor on the tiny test models."""
from __future__ import annotations

import copy

from host import Session
from test_editing_host import EXACT, warnings_of
from test_nodes_host import invert_and_replay, rms

MASKED = "inverted from a LATENT with a noise_mask"


def _both_invert_nodes() -> dict:
    """One image inverted twice, by an Invert node with a SetLatentNoiseMask LATENT (for the Inverted Latent Sampler)
    and by one without it, whose LATENT the Inverted Replay SAMPLER replays."""
    prompt = invert_and_replay(method="ExactInvert", extra=EXACT)
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 16}}
    prompt["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["latent", 0], "mask": ["mask", 0]}}
    prompt["invert"]["inputs"]["latent"] = ["masked", 0]
    prompt["plain"] = copy.deepcopy(prompt["invert"])
    prompt["plain"]["inputs"]["latent"] = ["latent", 0]
    return prompt

def add_replay_sampler(prompt: dict, node: str, inverted: str) -> None:
    """SamplerCustomAdvanced + Inverted Replay SAMPLER replaying node ``inverted``'s LATENT (the Invert nodes' 8 steps
    on ddim_uniform) as ``node``."""
    prompt["sched"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "ddim_uniform", "steps": 8, "denoise": 1.0}}
    prompt["guider"] = {"class_type": "CFGGuider", "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "cfg": 1.0}}
    prompt["nonoise"] = {"class_type": "DisableNoise", "inputs": {}}
    prompt["replay_sampler"] = {"class_type": "InvertedReplaySampler", "inputs": {}}
    prompt[node] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["nonoise", 0], "guider": ["guider", 0], "sampler": ["replay_sampler", 0], "sigmas": ["sched", 0],
        "latent_image": [inverted, 0]}}


def test_a_masked_inversion_of_the_same_image_does_not_speak_for_the_unmasked_ones_replay(caplog):
    """The mask does not change the inversion, so both Invert nodes register equal noise and the registry's latest
    entry decides: when the masked node ran last, the replay of the *unmasked* node's LATENT was told as a fact that
    it "was inverted from a LATENT with a noise_mask" whose mask is not applied, while it reconstructs like any
    replay (tiny EPS model: 0.5 % relative RMS). Now the warning says that the noise is
    both inversions' and which case it concerns."""
    session, prompt = Session(), _both_invert_nodes()
    session.run(prompt)
    prompt["mask"]["inputs"]["value"] = 0.5           # the masked node runs again (its entry is the latest)
    session.run(prompt)
    add_replay_sampler(prompt, "plain_replay", "plain")
    caplog.clear()
    out = session.run(prompt)
    assert "invert" not in out.executed and "plain" not in out.executed      # both from the cache
    x0 = out["latent"][0]["samples"]
    assert rms(out["plain_replay"][0]["samples"], x0) < 0.01 * x0.pow(2).mean().sqrt().item()    # measured 0.5 %
    said = warnings_of(caplog, MASKED)
    assert len(said) == 1, warnings_of(caplog)
    assert "also without one" in said[0] and "ignore this" in said[0], said[0]


def test_the_replay_of_a_masked_inversion_alone_is_still_warned_as_a_fact(caplog):
    """Only the masked Invert node holds this noise: the warning stays as it was."""
    prompt = _both_invert_nodes()
    prompt["mask"]["inputs"]["value"] = 0.25
    prompt["latent"]["inputs"]["seed"] += 40                   # an image no other test inverted without a mask
    del prompt["plain"]
    add_replay_sampler(prompt, "masked_replay", "invert")
    caplog.clear()
    Session().run(prompt)
    said = warnings_of(caplog, MASKED)
    assert len(said) == 1 and "this latent was inverted from a LATENT with a noise_mask" in said[0], said
