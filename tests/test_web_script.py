"""web/inversion_page.js run under Node.js against a stand-in for the frontend's app / api / widgets modules.

The page itself needs a browser; what is checked here is the script's own logic: a warning event becomes a toast
naming the node (or a console line on a frontend without toasts), and the Inversion Report's table lands in one
read-only text box that is not saved with the workflow. The upstream check (scripts/check_upstream_drive.py) checks
that the server serves the script and sends the event.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "web" / "inversion_page.js"
NODE = shutil.which("node")

FRONTEND = {
    "scripts/app.js": """
export const calls = { toasts: [], console: [] };
export const app = {
  graph: { getNodeById: (id) => (id === 12 ? { title: "Exact Invert" } : null) },
  extensionManager: { toast: { add: (t) => calls.toasts.push(t) } },
  extensions: [],
  registerExtension(ext) { this.extensions.push(ext); },
};
""",
    "scripts/api.js": """
export const api = { handlers: {}, addEventListener(name, fn) { (this.handlers[name] ??= []).push(fn); } };
""",
    "scripts/widgets.js": """
export const ComfyWidgets = {
  STRING(node, name, spec, app) {
    const widget = { name, spec, value: "", element: { readOnly: false } };
    (node.widgets ??= []).push(widget);
    return { widget };
  },
};
""",
    "main.mjs": """
import { app, calls } from "./scripts/app.js";
import { api } from "./scripts/api.js";
await import("./extensions/pack/inversion_page.js");
const [ext] = app.extensions;
ext.setup();
const fire = (detail) => api.handlers["comfyui-inversion.warning"].forEach((fn) => fn({ detail }));
fire({ message: "on a node", node: "12" });
fire({ message: "in a subgraph", node: "12:4" });
fire({ message: "no node", node: null });
const saved = app.extensionManager;
delete app.extensionManager;
const log = console.warn;
console.warn = (...a) => calls.console.push(a.join(" "));
fire({ message: "old frontend", node: "3" });
console.warn = log;
app.extensionManager = saved;

class Report { onExecuted(m) { this.before = (this.before ?? 0) + 1; } }
class Other {}
await ext.beforeRegisterNodeDef(Report, { name: "InversionReport" });
await ext.beforeRegisterNodeDef(Other, { name: "KSampler" });
const node = new Report();
node.onExecuted({ text: ["| PSNR | 40 |"] });
node.onExecuted({ text: ["| PSNR | 41 |"] });
node.onExecuted({ images: [] });
const w = node.widgets;
console.log(JSON.stringify({
  toasts: calls.toasts, console: calls.console, other: "onExecuted" in Other.prototype,
  before: node.before, widgets: w.map((x) => ({ name: x.name, value: x.value, serialize: x.serialize,
                                                readOnly: x.element.readOnly, multiline: x.spec[1].multiline })),
}));
""",
}


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed: the page script's logic is not exercised here "
                                         "(the upstream check still checks that it is served)")
def test_the_page_script_shows_warnings_and_the_report_table(tmp_path):
    for rel, text in FRONTEND.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "extensions" / "pack").mkdir(parents=True)
    shutil.copy(SCRIPT, tmp_path / "extensions" / "pack" / SCRIPT.name)
    run = subprocess.run([NODE, "main.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert [(t["summary"], t["detail"], t["severity"]) for t in got["toasts"]] == [
        ("Inversion warning: Exact Invert (#12)", "on a node", "warn"),
        ("Inversion warning: Exact Invert (#12:4)", "in a subgraph", "warn"),
        ("Inversion warning", "no node", "warn"),
    ]
    assert got["console"] == ["[comfyui-inversion] Inversion warning: node #3: old frontend"]
    assert got["other"] is False                                  # other node types are left alone
    assert got["before"] == 3                                     # the node's own onExecuted still runs
    assert got["widgets"] == [{"name": "report", "value": "| PSNR | 41 |", "serialize": False, "readOnly": True,
                               "multiline": True}]
