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
    # the same replay at batch 2 and 1: the network's kernels round differently per batch size (measured 1.9e-5 on a
    # latent of std 1; a replay on the wrong path or sigmas is off by 0.1-1)
    assert torch.allclose(out["joined_replay"][0]["samples"][:1], out["custom_replay"][0]["samples"], atol=1e-4)


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


def test_the_replay_sampler_replays_its_own_inversion_not_a_later_near_equal_one(caplog):
    """Exact Invert (preset exact) and then GNRI Invert (newton) of the same image: their tops differ by a relative
    RMS of 1.4e-04 on the tiny v-prediction model (T=8), within the float32 match tolerance (1e-3). The Inverted Replay
    SAMPLER took the LATEST matching inversion for the Exact node's LATENT, and, the difference being over the float32
    round trip, replayed GNRI's top instead of the given latent (silently: 6.0e-04 max difference to the node's replay
    here; on tiny Wan 2.1 upstream 97.8 dB instead of 116.3). Now the closest stored top is the latent's own: the chain
    equals the Inverted Latent Sampler's replay."""
    from host import Session

    session = Session()
    prompt = invert_and_replay("v_prediction", method="ExactInvert", extra=EXACT)
    session.run(prompt, ["invert", "replay"])
    prompt["gnri"] = with_defaults({"class_type": "GNRIInvert", "inputs": {
        **{k: prompt["invert"]["inputs"][k] for k in ("model", "positive", "negative", "latent", "steps", "scheduler",
                                                     "cfg", "denoise")}, "variant": "newton"}})
    out = session.run(prompt, ["gnri"])            # registered after the Exact inversion
    prompt["guider"] = {"class_type": "CFGGuider", "inputs": {"model": ["model", 0], "positive": ["positive", 0],
                                                              "negative": ["negative", 0], "cfg": 1.0}}
    prompt["nonoise"] = {"class_type": "DisableNoise", "inputs": {}}
    prompt["replay_sampler"] = with_defaults({"class_type": "InvertedReplaySampler", "inputs": {}})
    prompt["chain"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["nonoise", 0], "guider": ["guider", 0], "sampler": ["replay_sampler", 0],
        "sigmas": ["invert", 1], "latent_image": ["invert", 0]}}
    caplog.clear()
    out = session.run(prompt, ["chain", "replay", "gnri", "invert"])
    a, b = out["invert"][0]["samples"], out["gnri"][0]["samples"]
    rel = ((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()).item()
    diff = (out["chain"][0]["samples"] - out["replay"][0]["samples"]).abs().max().item()
    print(f"[latent nodes] Exact vs GNRI top rel RMS {rel:.3g}; SAMPLER chain vs node replay max diff {diff:.3g}")
    assert 1e-5 < rel < 1e-3, rel            # the case: near-equal tops (measured 1.4e-04)
    assert diff < 1e-6, diff                 # was the replay of GNRI's top
    assert not warnings_of(caplog, "is not the noise"), warnings_of(caplog)


def _per_item_prompt_chain():
    """A batch of two images inverted by the BDIA twin with one prompt per item (a 2-row positive), so a replay that
    pairs an item with the other row is measurably off (BDIA replays its own inversion bit for bit)."""
    prompt = add_custom_chain(invert_and_replay(batch=2), "BDIAInvertSampler", {})
    prompt["positive"]["inputs"]["batch"] = 2
    prompt["item0"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["custom", 0], "batch_index": 0,
                                                                   "length": 1}}
    prompt["item1"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["custom", 0], "batch_index": 1,
                                                                   "length": 1}}
    return prompt


@pytest.mark.parametrize("order", ("swapped", "repeated"))
def test_items_out_of_their_inversions_order_are_warned_where_the_prompt_rows_do_not_follow(caplog, order):
    """LatentBatch(item 1, item 0) or RepeatLatentBatch(item 1) of a per-item-prompt inversion, replayed by the
    Inverted Replay SAMPLER with the inversion's own guider: the host pairs item i with prompt row i, so the moved
    items got the other image's prompt (0.69 RMS off on tiny SD1 where the others came back bit for bit) without a
    word."""
    prompt = _per_item_prompt_chain()
    prompt["moved"] = ({"class_type": "LatentBatch", "inputs": {"samples1": ["item1", 0], "samples2": ["item0", 0]}}
                       if order == "swapped" else
                       {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["item1", 0], "amount": 2}})
    prompt["custom_replay"]["inputs"]["latent_image"] = ["moved", 0]
    caplog.clear()
    out = run_workflow(prompt, ["custom_replay", "latent"])
    x0, rec = out["latent"][0]["samples"], out["custom_replay"][0]["samples"]
    want = x0.flip(0) if order == "swapped" else x0[1:].repeat(2, 1, 1, 1)
    err = (rec - want).pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert err[0] > 0.1, err                          # item 0 (inverted as item 1) got row 0's prompt: off
    said = warnings_of(caplog, "gets the prompt of item")
    assert len(said) == 1 and "item 0 (inverted as item 1) gets the prompt of item 0" in said[0], warnings_of(caplog)
    assert ("item 1 (inverted as item 0)" in said[0]) == (order == "swapped"), said


def test_a_picked_item_with_its_own_prompt_row_is_quiet_and_exact(caplog):
    """The check compares rows, not batches: item 0 picked and replayed with a one-row prompt equal to the
    inversion's row 0 is its own reconstruction, unwarned (and the batch in order stays quiet too)."""
    prompt = _per_item_prompt_chain()
    prompt["row0"] = {"class_type": "InversionTestConditioning", "inputs": dict(prompt["positive"]["inputs"], batch=1)}
    prompt["guider0"] = copy.deepcopy(prompt["guider"])
    prompt["guider0"]["inputs"]["positive"] = ["row0", 0]
    prompt["pick_replay"] = copy.deepcopy(prompt["custom_replay"])
    prompt["pick_replay"]["inputs"].update(latent_image=["item0", 0], guider=["guider0", 0])
    caplog.clear()
    out = run_workflow(prompt, ["custom_replay", "pick_replay", "latent"])
    x0 = out["latent"][0]["samples"]
    assert (out["custom_replay"][0]["samples"] - x0).abs().max() < 1e-5
    assert (out["pick_replay"][0]["samples"] - x0[:1]).abs().max() < 1e-5
    assert not warnings_of(caplog, "gets the prompt of item"), warnings_of(caplog)
    assert not warnings_of(caplog, "Inverted Replay SAMPLER"), warnings_of(caplog)


def _per_item_guided_chain(cfg=3.0):
    """_per_item_prompt_chain at cfg 3 with one negative per item too (a 2-row negative), and a one-row positive /
    negative equal to row 0 of each (the conditioning of item 0 alone)."""
    prompt = _per_item_prompt_chain()
    prompt["negative"]["inputs"]["batch"] = 2
    prompt["guider"]["inputs"]["cfg"] = cfg
    for role in ("positive", "negative"):
        prompt[f"{role}0"] = {"class_type": "InversionTestConditioning",
                              "inputs": dict(prompt[role]["inputs"], batch=1)}
    prompt["other_negative"] = {"class_type": "InversionTestConditioning",
                                "inputs": dict(prompt["negative0"]["inputs"], seed=prompt["negative"]["inputs"]["seed"] + 5)}
    return prompt


@pytest.mark.parametrize("case", ("in order, row 0's negative for both", "item 0 picked, another negative",
                                  "item 0 picked, cfg 5", "item 0 picked, its own rows"))
def test_per_item_negatives_and_cfg_are_compared_row_by_row(caplog, case):
    """An inversion with one prompt and one negative per item at cfg 3: the replay's cfg and negative were compared
    with the whole batch's, which a picked item's own row never equals, so a picked item at another cfg or with
    another negative, and the batch in order with another item's negative row, were replayed off the image without
    a word (tiny SD1, BDIA: 1.3-1.7 RMS instead of 0)."""
    prompt = _per_item_guided_chain()
    prompt["custom_replay"]["inputs"]["guider"] = ["replay_guider", 0]
    prompt["replay_guider"] = copy.deepcopy(prompt["guider"])
    picked = case.startswith("item 0")
    if picked:
        prompt["custom_replay"]["inputs"]["latent_image"] = ["item0", 0]
        prompt["replay_guider"]["inputs"].update(positive=["positive0", 0], negative=["negative0", 0])
    if case.endswith("row 0's negative for both"):
        prompt["replay_guider"]["inputs"]["negative"] = ["negative0", 0]
    elif case.endswith("another negative"):
        prompt["replay_guider"]["inputs"]["negative"] = ["other_negative", 0]
    elif case.endswith("cfg 5"):
        prompt["replay_guider"]["inputs"]["cfg"] = 5.0
    caplog.clear()
    out = run_workflow(prompt, ["custom_replay", "latent"])
    x0 = out["latent"][0]["samples"][:1] if picked else out["latent"][0]["samples"]
    err = (out["custom_replay"][0]["samples"] - x0).pow(2).mean(dim=(1, 2, 3)).sqrt()
    said = warnings_of(caplog, "Inverted Replay SAMPLER: ")
    if case.endswith("own rows"):
        assert err.max() < 1e-5 and not said, (err, said)
        return
    assert err.max() > 0.5, err
    assert len(said) == 1, said
    if case.endswith("cfg 5"):
        assert "cfg is 5 where the inversion ran at cfg 3" in said[0], said
    else:
        want = "item 1 gets another negative" if case.startswith("in order") else "item 0 gets another negative"
        assert "Inverted Replay SAMPLER: negative:" in said[0] and want in said[0], said
        assert err[0 if picked else 1] > 0.5 and (picked or err[0] < 1e-5), err
