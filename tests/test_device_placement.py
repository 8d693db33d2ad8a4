"""Every tensor the core makes names its device, or says why it lives on the CPU.

CI has no GPU, and the suite runs on the CPU, where a tensor made without ``device=`` always meets the latent on the
same device. On a GPU it does not: PreciseInv and GNRI's Newton variant made their per-item bookkeeping
(``torch.ones(B)``, ``torch.full((B,), ...)``) on the CPU and stopped with "Expected all tensors to be on the same
device" on their first step (found by the first run on an H200). This reads the core's source: a tensor factory
call without ``device=`` must carry the comment marker ``# on the CPU`` (on its line or the one above) saying why.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACTORIES = {"zeros", "ones", "full", "empty", "arange", "linspace", "eye", "rand", "randn", "randint", "tensor"}
MARKER = "# on the CPU"


def unplaced_factories(path: Path) -> list:
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and node.func.attr in FACTORIES):
            continue
        if any(k.arg == "device" for k in node.keywords):
            continue
        near = " ".join(lines[max(node.lineno - 2, 0):node.end_lineno])
        if MARKER not in near:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_the_core_makes_its_tensors_on_the_latents_device_or_says_why_not():
    files = sorted((ROOT / "inversion_core").rglob("*.py"))
    assert len(files) > 10
    found = [hit for f in files for hit in unplaced_factories(f)]
    assert not found, "tensor factories without device= (or a '# on the CPU' reason):\n" + "\n".join(found)


def test_the_check_sees_an_unplaced_factory(tmp_path):
    bad = ROOT / "inversion_core" / "_probe_unplaced.py"
    try:
        bad.write_text("import torch\n\nx = torch.ones(3)\ny = torch.ones(3, device='cpu')\n"
                       "z = torch.zeros(2)  # on the CPU: a probe\n")
        assert unplaced_factories(bad) == ["inversion_core/_probe_unplaced.py:3: x = torch.ones(3)"]
    finally:
        bad.unlink()
