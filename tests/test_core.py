"""Core unit tests: the inversion driver, DDIM and replay on analytic denoisers (no host involved)."""
from __future__ import annotations

import math

import pytest
import torch

from inversion_core import Denoiser, ScheduleError, StepFailed, as_sampling_schedule, ddim_step, invert, replay
from inversion_core.steps import euler_step

from analytic import S, eps_denoiser, eps_exact, flow_denoiser, flow_exact, flow_schedule, image, karras



def round_trip_error(raw, x0: torch.Tensor, sigmas: torch.Tensor) -> float:
    rec = invert(Denoiser(raw), x0, sigmas, ddim_step, method="ddim")
    back = replay(Denoiser(raw), rec.states[-1], sigmas)
    return (back - x0).abs().max().item()


@pytest.mark.parametrize("raw, schedule", [(eps_denoiser, karras), (flow_denoiser, flow_schedule)],
                         ids=["eps", "flow"])
def test_ddim_round_trip_error_shrinks_as_steps_grow(raw, schedule):
    x0 = image()
    errors = [round_trip_error(raw, x0, schedule(t)) for t in (4, 10, 50)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < errors[0] / 3


@pytest.mark.parametrize("raw, exact, schedule", [(eps_denoiser, eps_exact, karras),
                                                  (flow_denoiser, flow_exact, flow_schedule)], ids=["eps", "flow"])
def test_ddim_inversion_approaches_the_exact_flow(raw, exact, schedule):
    x0 = image()
    sig = schedule(1000)
    top = float(sig[0])
    rec = invert(Denoiser(raw), x0, sig, ddim_step, method="ddim")
    want = exact(x0, top)
    rel = (rec.states[-1] - want).norm() / want.norm()
    assert rel < 0.02, rel
    assert all(torch.isfinite(s).all() for s in rec.states)


def test_replay_of_known_noise_matches_hand_computed_trajectory():
    sig = karras(6)
    xT = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 14.6
    x = xT.clone()
    s = sig.tolist()
    for i in range(len(s) - 1):   # written out independently of the library's step helper
        d = (x - eps_denoiser(x, s[i])) / s[i]
        x = x + (s[i + 1] - s[i]) * d
    out = replay(Denoiser(eps_denoiser), xT, sig)
    assert torch.allclose(out, x, atol=1e-6, rtol=0)


def test_inversion_counts_one_evaluation_per_step_and_keeps_inputs():
    x0 = image()
    before = x0.clone()
    den = Denoiser(eps_denoiser)
    rec = invert(den, x0, karras(7), ddim_step, method="ddim")
    assert torch.equal(x0, before)
    assert den.calls == 7 and rec.forward_evals == pytest.approx(7)
    assert len(rec.states) == 8 and len(rec.steps) == 7
    assert rec.sigmas[0] > rec.sigmas[-1] == 0


def test_inversion_is_deterministic():
    x0 = image()
    a = invert(Denoiser(eps_denoiser), x0, karras(5), ddim_step, method="ddim").states[-1]
    b = invert(Denoiser(eps_denoiser), x0, karras(5), ddim_step, method="ddim").states[-1]
    assert torch.equal(a, b)


def test_first_step_from_sigma_zero_uses_the_next_level():
    """The classic convention evaluates D(x_0, σ_1): finite at σ_0 = 0, exact for a linear denoiser's Euler step."""
    x0 = image(1)
    sig = torch.tensor([2.0, 0.0])
    rec = invert(Denoiser(eps_denoiser), x0, sig, ddim_step, method="ddim")
    want = x0 + 2.0 * (x0 - eps_denoiser(x0, 2.0)) / 2.0
    assert torch.allclose(rec.states[-1], want, atol=1e-7)


def test_model_nan_names_step_and_sigma():
    def bad(x, sigma):
        return x * float("nan") if sigma > 1 else x * 0.5

    with pytest.raises(StepFailed, match=r"step \d+/\d+ .*sigma"):
        invert(Denoiser(bad), image(), karras(5), ddim_step, method="ddim")


def test_interrupt_is_checked_before_each_evaluation():
    class Stop(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    den = Denoiser(eps_denoiser, check_interrupt=check)
    with pytest.raises(Stop):
        invert(den, image(), karras(10), ddim_step, method="ddim")
    assert den.calls == 2


@pytest.mark.parametrize("bad, msg", [([1.0], "at least 2"), ([3.0, 1.0, 1.0, 0.0], "monotonic"),
                                      ([3.0, 2.0, 5.0, 0.0], "monotonic"), ([2.0, float("nan"), 0.0], "NaN.*another scheduler"),
                                      ([2.0, -1.0], ">= 0"), ([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0]], "1-D")])
def test_bad_schedules_are_rejected_with_a_reason(bad, msg):
    with pytest.raises(ScheduleError, match=msg):
        as_sampling_schedule(torch.tensor(bad))


def test_a_schedule_with_one_row_is_read_as_its_row():
    assert torch.equal(as_sampling_schedule(torch.tensor([[3.0, 1.0, 0.0]])), torch.tensor([3.0, 1.0, 0.0]))


def test_flipped_schedule_is_read_back_as_the_sampling_schedule():
    sig = karras(4)
    flipped = sig.flip(0).clone()
    flipped[0] = 1e-4          # what the host's FlipSigmas does to a leading zero
    assert torch.equal(as_sampling_schedule(flipped), sig)


def test_repeat_difference_tells_a_function_from_a_model_that_varies():
    """Denoiser.repeat_difference evaluates the first evaluation at sigma > 0 once more (counted): 0 for a function of
    the input, the change relative to the prediction x - D(x) for a denoiser that draws random numbers per call."""
    x0 = image()
    plain = Denoiser(eps_denoiser, remember_first=True)
    invert(plain, x0, karras(4), ddim_step, method="ddim")
    calls = plain.calls
    assert plain.repeat_difference() == 0.0 and plain.calls == calls + 1
    assert Denoiser(eps_denoiser).repeat_difference() is None        # nothing remembered: no evaluation

    gen = torch.Generator().manual_seed(0)

    def noisy(x, sigma):      # a prediction off by 1 % of its size, drawn anew on every call
        eps = (x - eps_denoiser(x, sigma)) / sigma
        return x - sigma * eps * (1 + 0.01 * torch.randn(eps.shape, generator=gen))

    varies = Denoiser(noisy, remember_first=True)
    invert(varies, x0, karras(4), ddim_step, method="ddim")
    assert 0.005 < varies.repeat_difference() < 0.03
    assert varies.repeat_rtol() == pytest.approx(1e-4)
