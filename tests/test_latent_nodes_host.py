"""Host latent nodes between an inversion and its replay (LatentBatch of two inversions' LATENTs), through the
host's executor on the tiny test model."""
from __future__ import annotations

import copy

import pytest
import torch

from host import WorkflowError, run_workflow
from test_editing_host import EXACT, add_custom_chain, warnings_of
from test_nodes_host import invert_and_replay, with_defaults


def _two_twins(first: str, second: str, extra_first=None, extra_second=None, second_scheduler=None):
    """Two SAMPLER-twin inversions of different images (SamplerCustomAdvanced), their LATENTs joined by LatentBatch
    and replayed by the Inverted Replay SAMPLER in one run; ``single`` replays the first image's twin alone."""
    prompt = add_custom_chain(invert_and_replay(), first, extra_first or {})
    prompt["latent2"] = {"class_type": "InversionTestLatent", "inputs": {"seed": 40, "batch": 1, "channels": 4,
                                                                         "size": 16}}
    prompt["inv_sampler2"] = with_defaults({"class_type": second, "inputs": dict(extra_second or {})})
    prompt["custom2"] = copy.deepcopy(prompt["custom"])
    prompt["custom2"]["inputs"].update(latent_image=["latent2", 0], sampler=["inv_sampler2", 0])
    if second_scheduler:
        prompt["sched2"] = dict(copy.deepcopy(prompt["sched"]))
        prompt["sched2"]["inputs"]["scheduler"] = second_scheduler
        prompt["flip2"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sched2", 0]}}
        prompt["custom2"]["inputs"]["sigmas"] = ["flip2", 0]
    prompt["both"] = {"class_type": "LatentBatch", "inputs": {"samples1": ["custom", 0], "samples2": ["custom2", 0]}}
    prompt["images"] = {"class_type": "LatentBatch", "inputs": {"samples1": ["latent", 0], "samples2": ["latent2", 0]}}
    prompt["joined_replay"] = copy.deepcopy(prompt["custom_replay"])
    prompt["joined_replay"]["inputs"]["latent_image"] = ["both", 0]
    return prompt


def test_a_batch_of_two_bdia_inversions_is_replayed_with_bdia_item_by_item(caplog):
    """LatentBatch of two BDIA inversions' LATENTs, then the Inverted Replay SAMPLER: the registry matched only whole
    tops, so the joined batch was 'no inversion's noise' and BDIA's noise was replayed with the plain step (a
    generation: 17.6 / 18.4 dB on tiny SD1, 33.8 / 34.6 on tiny SD3, instead of bit for bit)."""
    prompt = _two_twins("BDIAInvertSampler", "BDIAInvertSampler")
    caplog.clear()
    out = run_workflow(prompt, ["joined_replay", "images"])
    x0, rec = out["images"][0]["samples"], out["joined_replay"][0]["samples"]
    assert rec.shape == x0.shape
    assert (rec - x0).abs().max() < 1e-5, (rec - x0).abs().amax(dim=(1, 2, 3))
    assert not warnings_of(caplog, "is not the noise"), warnings_of(caplog)


def test_a_batch_of_inversions_on_different_sigmas_is_an_error_naming_the_latent():
    prompt = _two_twins("ExactInvertSampler", "ExactInvertSampler", EXACT, EXACT, second_scheduler="karras")
    with pytest.raises(WorkflowError) as err:
        run_workflow(prompt, ["joined_replay"])
    msg = err.value.exception_message
    assert msg.startswith("latent_image: its batch items are the noise of inversions made on different sigmas"), msg


def test_a_batch_of_a_bdia_and_another_inversion_is_an_error_naming_the_latent():
    prompt = _two_twins("BDIAInvertSampler", "ExactInvertSampler", extra_second=EXACT)
    with pytest.raises(WorkflowError) as err:
        run_workflow(prompt, ["joined_replay"])
    assert err.value.exception_message.startswith("latent_image: batch items [0] of this latent are the noise of BDIA"), \
        err.value.exception_message


def test_a_batch_of_two_plain_inversions_on_the_same_sigmas_is_checked_and_replayed(caplog):
    prompt = _two_twins("ExactInvertSampler", "ExactInvertSampler", EXACT, EXACT)
    caplog.clear()
    out = run_workflow(prompt, ["joined_replay", "custom_replay"])
    assert not warnings_of(caplog, "is not the noise"), warnings_of(caplog)
    assert torch.allclose(out["joined_replay"][0]["samples"][:1], out["custom_replay"][0]["samples"], atol=1e-5)


def test_a_batch_of_inversions_with_other_prompts_says_that_only_item_0_is_compared(caplog):
    """The registry compares a joined batch's replay with item 0's model and guidance only; an item inverted with
    another prompt is named (replayed with item 0's prompt it is not its reconstruction)."""
    prompt = _two_twins("ExactInvertSampler", "ExactInvertSampler", EXACT, EXACT)
    prompt["positive2"] = dict(copy.deepcopy(prompt["positive"]))
    prompt["positive2"]["inputs"]["seed"] += 17
    prompt["guider2"] = copy.deepcopy(prompt["guider"])
    prompt["guider2"]["inputs"]["positive"] = ["positive2", 0]
    prompt["custom2"]["inputs"]["guider"] = ["guider2", 0]
    caplog.clear()
    run_workflow(prompt, ["joined_replay"])
    said = warnings_of(caplog, "another model or another prompt / cfg than item 0")
    assert len(said) == 1 and "batch items [1]" in said[0], warnings_of(caplog)
    caplog.clear()
    run_workflow(_two_twins("ExactInvertSampler", "ExactInvertSampler", EXACT, EXACT), ["joined_replay"])
    assert not warnings_of(caplog, "than item 0"), warnings_of(caplog)       # same model and prompt: quiet
