"""The edit benchmark's quick mode on the bundled reference model (scripts/benchmark_edits.py, issue 14)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

import host

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def test_quick_edit_benchmark_prints_the_table_and_measures_what_the_readme_reports(tmp_path, capsys):
    host.engine()
    import benchmark_edits

    results = benchmark_edits.main(["--quick", "--model", "reference", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    header = out[out.index("| setting |"):].splitlines()[0]
    for column in ("structure", "background PSNR", "edit score", "accuracy"):
        assert f"| {column} |" in header
    assert "| plain replay |" in out
    rows = list(csv.DictReader(open(tmp_path / "edits.csv")))
    assert {r["setting"] for r in rows} >= {"plain replay", "replay + source correction", "masactrl 0-1",
                                            "p2p swap 0-0.8", "pnp + features 0-0.3"}
    assert (tmp_path / "edits.png").stat().st_size > 5000
    res = {r["setting"]: r for r in results[0]["rows"]}
    plain = res["plain replay"]
    # measured on this model (see README): PnP with the source's decoder features keeps structure (about a quarter
    # of plain replay's distance) while the classifier still sees the edit prompt as clearly (>= 80 %)
    feat = res["pnp + features 0-0.3"]
    assert feat["structure"] <= 0.5 * plain["structure"], (feat["structure"], plain["structure"])
    assert feat["edit score"] >= 0.8 * plain["edit score"], (feat["edit score"], plain["edit score"])
    # the latent pin keeps the background exactly; the engine's KV mask alone does not (on this model)
    assert res["masked: plain replay, latent pin"]["background PSNR"] >= 35.0
    assert res["masked: masactrl 0-1, KV mask only"]["background PSNR"] < 35.0
    # the source branch runs only inside the window
    assert res["plain replay"]["source evals"] == 0 < res["pnp attention 0-0.5"]["source evals"] \
        < res["masactrl 0-1"]["source evals"]


def test_quick_edit_benchmark_on_the_flow_reference_model(tmp_path, capsys):
    host.engine()
    rm = sys.modules[host.PACK_DIR_NAME + ".nodes.reference_model"]
    try:
        rm.load_reference_model("sd3-mmdit-flow")
    except Exception as e:  # trained by its own job; the benchmark says so and skips it too
        pytest.skip(f"the flow reference model is not available here: {e}")
    import benchmark_edits

    results = benchmark_edits.main(["--quick", "--model", "sd3-mmdit-flow", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "## sd3-mmdit-flow" in out and "| plain replay |" in out
    res = {r["setting"]: r for r in results[0]["rows"]}
    plain = res["plain replay"]
    assert plain["accuracy"] >= 0.5 and plain["edit score"] > 0          # plain replay carries the edit prompt
    # full-schedule key/value injection keeps the structure (measured 5.1 vs 28.6) at the cost of the edit
    assert res["dit_kv 0-1"]["structure"] < 0.5 * plain["structure"]
    assert res["dit_kv 0-1"]["edit score"] < plain["edit score"]
    # issue 14's target on the quick images too: some window keeps >= 80 % of the edit at <= half the structure
    # distance (measured: 0-0.8 here, 42 % at 96 %; on all 8 images 0-0.85, 38 % at 101 %: the trade is steep)
    kept = [k for k, r in res.items() if k.startswith("dit_kv") and r["structure"] <= 0.5 * plain["structure"]
            and r["edit score"] >= 0.8 * plain["edit score"]]
    assert kept, {k: (r["structure"], r["edit score"]) for k, r in res.items()}
    assert res["masked: dit_kv 0-1 layers none, KV mask + latent pin"]["background PSNR"] >= 35.0


def test_benchmark_sh_dispatches_edits():
    r = subprocess.run(["bash", str(ROOT / "scripts" / "benchmark.sh"), "--edits", "--help"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "benchmark_edits" in r.stdout + r.stderr or "Edit benchmark" in r.stdout, r.stdout
