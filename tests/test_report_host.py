"""The Inversion Report node: metrics against hand-computed values, the table and the plot."""
from __future__ import annotations

import math

import torch

import host
from host import run_workflow
from test_nodes_host import invert_and_replay


def images(seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 32, 32, 3, generator=g)
    b = (a + noise * torch.randn(a.shape, generator=g)).clamp(0, 1)
    return a, b


def test_psnr_and_ssim_are_measured_per_item():
    a, b = images()
    node = host.node_class("InversionReport")()
    out = node.report(a, b)
    table, plot = out["result"]
    want = [10 * math.log10(1 / (a[i] - b[i]).pow(2).mean().item()) for i in range(2)]
    for i, w in enumerate(want):
        assert f"| {i} | {w:.2f} |" in table
    same = node.report(a, a.clone())["result"][0]
    assert "| 0 | inf | 1.0000 |" in same
    assert plot.shape == (1, 256, 512, 3) and 0 <= plot.min() and plot.max() <= 1
    assert out["ui"]["text"] == [table]


def test_report_shows_cost_and_residuals_of_an_inversion():
    out = run_workflow(invert_and_replay(method="ExactInvert", extra={
        "preset": "balanced", "tolerance": 1e-4, "budget": 3, "memory": 3}))
    inv = out["invert"][0]
    a, b = images(1)
    table, plot = host.node_class("InversionReport")().report(a, b, inv)["result"]
    assert "method: exact" in table and "forward" in table and "per-step residual" in table
    assert "not measured" not in table
    assert (plot < 0.9).any()                                      # bars were drawn
    ddim = run_workflow(invert_and_replay())["invert"][0]
    assert "not measured by this method" in host.node_class("InversionReport")().report(a, b, ddim)["result"][0]


def test_mismatched_images_name_the_input():
    a, _ = images()
    try:
        host.node_class("InversionReport")().report(a, a[:1])
    except ValueError as e:
        assert "reconstructed" in str(e)
    else:
        raise AssertionError("no error")
