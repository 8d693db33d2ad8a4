"""The Edit Engine's reference workflows (workflows/reference_edit_engine_*.json): up to date, valid, and they run as
dropped (UI format converted to an API prompt and executed in the host)."""
from __future__ import annotations

import json
import sys

import pytest
import torch

import host
from workflow_format import ui_to_api, validate_ui

sys.path.insert(0, str(host.PACK_ROOT / "scripts"))
FILES = sorted((host.PACK_ROOT / "workflows").glob("reference_edit_engine_*.json"))


@pytest.fixture(scope="module")
def defs():
    return host.engine().nodes.NODE_CLASS_MAPPINGS


def test_committed_files_are_what_the_generator_writes(defs):
    import make_edit_workflows

    built = make_edit_workflows.build_all(defs)
    assert sorted(built) == sorted([p.name for p in FILES] + list(make_edit_workflows.CHECKPOINT_EDIT_WORKFLOWS))
    for name, ui in built.items():
        assert make_edit_workflows.render(ui) == (host.PACK_ROOT / "workflows" / name).read_text("utf-8"), name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_engine_workflow_runs_as_dropped(path, defs):
    ui = json.loads(path.read_text("utf-8"))
    assert validate_ui(ui, defs) == []
    api = ui_to_api(ui, defs)
    assert any(n["class_type"] == "InversionEditEngine" for n in api.values())
    out = host.run_workflow(api)
    decoded = {nid: out[nid][0] for nid, n in api.items() if n["class_type"] == "VAEDecode"}
    assert len(decoded) == 2
    plain, engine = decoded.values()
    for img in (plain, engine):
        assert tuple(img.shape) == (1, 32, 32, 3) and torch.isfinite(img).all()
    assert (plain - engine).abs().max() > 1e-3            # the engine changed the edit


def test_checkpoint_engine_workflows_validate(defs):
    import make_edit_workflows

    for name, make in make_edit_workflows.CHECKPOINT_EDIT_WORKFLOWS.items():
        ui = make(defs)
        assert validate_ui(ui, defs) == [], name
        api = ui_to_api(ui, defs)
        assert any(n["class_type"] == "InversionEditEngine" for n in api.values()), name
