"""A real ComfyUI engine (the PyPI fork ``comfyui==0.0.1``) with this pack loaded the way the host loads custom nodes.

Nothing here is mocked. ``engine()`` makes a temporary base directory whose ``custom_nodes/`` holds

* ``comfyui-inversion``        -> a symlink to the pack root (this repository), named like a user's git clone;
* ``inversion-testing-nodes``  -> a symlink to ``tests/testing_nodes`` (tiny real models; test-only);

points the fork's ``folder_paths`` at it (``comfy.cli_args.args.cwd``, read when ``comfy.cmd.folder_paths`` is first
imported) and calls ``comfy.nodes.package.import_all_nodes_in_workspace()``, which maps the vanilla module names
(``folder_paths``, ``nodes``, ``comfy_extras``...) and imports every ``custom_nodes/*`` package as module
``<folder name>`` (so the pack is ``sys.modules["comfyui-inversion"]``; its relative imports resolve inside it).

API (see tests/test_harness.py for examples)::

    engine() -> Engine                    # started once per process; .base_dir, .nodes, .import_log, .import_failures
    node_class(name) -> type              # a node class from the host's registry
    pack_module() -> module               # the pack as the host imported it
    testing_module() -> module            # tests/testing_nodes as the host imported it
    tiny_model(kind="eps", seed=0, channels=4, inference_mode=False) -> ModelPatcher
    tiny_inputs(kind="eps", seed=0, ...) -> dict   # prompt fragment: nodes "model", "positive", "negative", "latent"
    run_workflow(prompt, outputs=None, *, session=None, on_event=None) -> RunResult
    Session()                             # one PromptExecutor kept across runs (to test the host's output cache)
    interrupt(); interrupt_after(seconds) -> Timer; interrupt_on_progress(n, node=None) -> on_event callback

Errors: validation failures raise ``WorkflowValidationError``; an exception inside a node raises ``WorkflowError``
whose message holds the node id, its class, the exception type and the node's own exception text (plus the
traceback); an interrupt raises ``WorkflowInterrupted`` (the executor catches the host's
``comfy.interruption.InterruptProcessingException`` and reports an ``execution_interrupted`` message with the node id).
All three subclass ``WorkflowError``.

Progress: every run uses a recording server object with ``receive_all_progress_notifications = True`` (the fork's
KSampler only drives its progress bar then); ``comfy.utils.ProgressBar.update_absolute`` ends in
``server.send_sync("progress", {"value", "max", "node", "prompt_id"})``, which lands in ``RunResult.progress``.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import io
import os
import shutil
import sys
import tempfile
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

TESTS_DIR = Path(__file__).resolve().parent
PACK_ROOT = TESTS_DIR.parent
PACK_DIR_NAME = "comfyui-inversion"
TESTING_DIR_NAME = "inversion-testing-nodes"

_lock = threading.RLock()
_engine: Optional["Engine"] = None


# ----------------------------------------------------------------------------------------------------------- errors
class WorkflowError(RuntimeError):
    """A workflow failed in the host; ``node_id``, ``class_type``, ``exception_type``, ``exception_message``."""

    def __init__(self, message: str, *, node_id: Optional[str] = None, class_type: Optional[str] = None,
                 exception_type: Optional[str] = None, exception_message: Optional[str] = None,
                 traceback: Iterable[str] = (), details: Any = None, result: Optional["RunResult"] = None):
        super().__init__(message)
        self.node_id = node_id
        self.class_type = class_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback = list(traceback)
        self.details = details
        self.result = result  # what ran before the failure (outputs of executed nodes, progress, messages)


class WorkflowValidationError(WorkflowError):
    """The host's ``validate_prompt`` / ``validate_inputs`` rejected the prompt (nothing ran)."""


class WorkflowInterrupted(WorkflowError):
    """The host's interrupt flag stopped the workflow (InterruptProcessingException inside ``node_id``)."""


# ----------------------------------------------------------------------------------------------------------- engine
@dataclass
class Engine:
    base_dir: Path
    nodes: Any  # comfy.nodes.package_typing.ExportedNodes
    import_log: str
    import_failures: list = field(default_factory=list)  # custom node folders the host failed to import


def _link(target: Path, link: Path) -> None:
    try:
        link.symlink_to(target, target_is_directory=True)
    except OSError:  # no symlinks here: a copy is what a user's manual install would be
        shutil.copytree(target, link, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__"))


def _point_folder_paths_at(base: Path) -> None:
    """The fork computes its base path when ``comfy.cmd.folder_paths`` is first imported: from ``args.cwd``."""
    from comfy.cli_args import args

    args.cwd = str(base)
    if os.environ.get("INVERSION_TEST_GPU", "") != "1":
        args.cpu = True  # the suite is CPU-only and must not depend on the machine
    fp = sys.modules.get("comfy.cmd.folder_paths")
    if fp is not None and os.path.realpath(fp.base_path) != os.path.realpath(base):
        # imported too early (before the harness): repoint what the loader and the save nodes use
        from comfy.cmd.folder_paths import FolderPathsTuple

        fp.base_path = str(base)
        fp.folder_names_and_paths.contents["custom_nodes"] = FolderPathsTuple("custom_nodes", [str(base / "custom_nodes")], set())
        fp.set_output_directory(str(base / "output"))
        fp.set_temp_directory(str(base / "temp"))
        fp.set_input_directory(str(base / "input"))


def engine() -> Engine:
    """Start the host once per process (a few seconds) and return it."""
    global _engine
    with _lock:
        if _engine is not None:
            return _engine
        base = Path(tempfile.mkdtemp(prefix="comfyui-inversion-host-"))
        atexit.register(shutil.rmtree, base, True)
        custom = base / "custom_nodes"
        custom.mkdir()
        for sub in ("models", "input", "output", "temp", "user"):
            (base / sub).mkdir()
        _link(PACK_ROOT, custom / PACK_DIR_NAME)
        _link(TESTS_DIR / "testing_nodes", custom / TESTING_DIR_NAME)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the fork's vendored aiohttp instrumentation
            _point_folder_paths_at(base)
            from comfy.cmd import folder_paths
            from comfy.nodes.package import import_all_nodes_in_workspace

        if os.path.realpath(folder_paths.get_folder_paths("custom_nodes")[0]) != os.path.realpath(custom):
            raise RuntimeError(f"host custom_nodes is {folder_paths.get_folder_paths('custom_nodes')}, not {custom}")
        log = io.StringIO()
        # the vanilla loader reports a failing custom node by printing its traceback (it never raises)
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the fork's vendored aiohttp instrumentation
            nodes = import_all_nodes_in_workspace()
        text = log.getvalue()
        failures = [name for name in (PACK_DIR_NAME, TESTING_DIR_NAME)
                    if f"Cannot import {custom / name} module" in text or name not in sys.modules
                    or getattr(sys.modules[name], "NODE_CLASS_MAPPINGS", None) is None]
        if failures:
            sys.stderr.write(f"[host] custom node import failed: {failures}\n{text}")
        _engine = Engine(base_dir=base, nodes=nodes, import_log=text, import_failures=failures)
        atexit.register(_shutdown)
        return _engine


def _shutdown() -> None:
    with contextlib.suppress(Exception):
        from comfy import model_management

        model_management.unload_all_models()


def node_class(name: str) -> type:
    """The class the host registered under ``name`` (proves it went through the host's loader)."""
    mappings = engine().nodes.NODE_CLASS_MAPPINGS
    if name not in mappings:
        close = sorted(n for n in mappings if name.lower()[:6] in n.lower())[:20]
        raise KeyError(f"node {name!r} is not registered in the host (similar: {close})")
    return mappings[name]


def pack_module():
    """The pack's top-level module as the host imported it from ``custom_nodes/comfyui-inversion``."""
    engine()
    return sys.modules[PACK_DIR_NAME]


def testing_module():
    engine()
    return sys.modules[TESTING_DIR_NAME]


def pack_node_names() -> list:
    """Node names the host registered from this pack (class defined in a ``comfyui-inversion`` module)."""
    mappings = engine().nodes.NODE_CLASS_MAPPINGS
    return sorted(n for n, c in mappings.items() if getattr(c, "__module__", "").split(".")[0] == PACK_DIR_NAME)


def tiny_model(kind: str = "eps", seed: int = 0, channels: int = 4, inference_mode: bool = False):
    """The same tiny model ``InversionTestTinyModel`` returns, as a direct call (a ``ModelPatcher``).

    ``inference_mode=True`` builds it under ``torch.inference_mode()`` like a node (and the standard loaders) inside
    the executor: its weights are then inference tensors.
    """
    import torch

    build = testing_module().build_tiny_model
    if inference_mode:
        with torch.inference_mode():
            return build(kind, seed, channels)
    return build(kind, seed, channels)


def tiny_conditioning(seed: int = 0, batch: int = 1, tokens: int = 4, dim: int = 16):
    return testing_module().make_conditioning(seed, batch, tokens, dim)


def tiny_latent(seed: int = 0, batch: int = 1, channels: int = 4, size: int = 16):
    return testing_module().make_latent(seed, batch, channels, size)


def tiny_inputs(kind: str = "eps", seed: int = 0, channels: int = 4, batch: int = 1, size: int = 16,
                tokens: int = 4) -> dict:
    """Prompt fragment with nodes ``model`` (MODEL), ``positive``/``negative`` (CONDITIONING), ``latent`` (LATENT)."""
    return {
        "model": {"class_type": "InversionTestTinyModel", "inputs": {"kind": kind, "seed": seed, "channels": channels}},
        "positive": {"class_type": "InversionTestConditioning",
                     "inputs": {"seed": seed + 1, "batch": 1, "tokens": tokens, "dim": 16}},
        "negative": {"class_type": "InversionTestConditioning",
                     "inputs": {"seed": seed + 2, "batch": 1, "tokens": tokens, "dim": 16}},
        "latent": {"class_type": "InversionTestLatent",
                   "inputs": {"seed": seed + 3, "batch": batch, "channels": channels, "size": size}},
    }


# ------------------------------------------------------------------------------------------------------- execution
class RecordingServer:
    """The executor's ``server``: records every ``send_sync`` event and forwards it to listeners."""

    def __init__(self):
        self.client_id: Optional[str] = str(uuid.uuid4())
        self.last_node_id = None
        self.last_prompt_id = None
        self.receive_all_progress_notifications = True
        self.events: list = []
        self.addressed: list = []         # (event, data, sid): whom each event was sent to
        self.listeners: list = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))
        self.addressed.append((event, data, sid))
        for listener in list(self.listeners):
            listener(event, data)

    def queue_updated(self):
        pass


class RunResult(dict):
    """``{node_id: (output0, output1, ...)}`` for every node whose outputs the executor holds after the run.

    A value is the node's return value; where the host holds a list of several (list-mapped nodes or
    ``OUTPUT_IS_LIST``) it is that list. ``raw`` is the executor's own ``outputs`` (lists), ``ui`` its
    ``outputs_ui``; ``executed`` the nodes that ran in this run (in order), ``cached`` those reused from a previous run
    of the same ``Session``; ``progress`` the progress messages (dicts with ``node``, ``value``, ``max``);
    ``events`` every ``(event, data)`` the executor sent.
    """

    raw: dict
    ui: dict
    executed: list
    cached: list
    progress: list
    events: list

    def progress_for(self, node_id: str) -> list:
        return [(p["value"], p["max"]) for p in self.progress if p.get("node") == str(node_id)]


def _normalise(prompt: dict) -> dict:
    out = {}
    for node_id, node in prompt.items():
        node = copy.deepcopy(dict(node))
        inputs = node.get("inputs", {})
        for k, v in list(inputs.items()):
            if isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[1], int) and isinstance(v[0], (str, int)) \
                    and str(v[0]) in {str(i) for i in prompt}:
                inputs[k] = [str(v[0]), v[1]]
        out[str(node_id)] = node
    return out


def _targets(prompt: dict) -> list:
    from comfy.cmd.execution import nodes

    referenced = {v[0] for node in prompt.values() for v in node.get("inputs", {}).values() if isinstance(v, list)}
    targets = []
    for node_id, node in prompt.items():
        cls = nodes.NODE_CLASS_MAPPINGS.get(node.get("class_type"))
        if node_id not in referenced or getattr(cls, "OUTPUT_NODE", False) is True:
            targets.append(node_id)
    return targets


def _validation_error(prompt: dict, message: str, node_errors: dict) -> WorkflowValidationError:
    lines = [message]
    first = None
    for node_id, info in node_errors.items():
        first = first or node_id
        for reason in info["errors"]:
            lines.append(f"node {node_id} ({info.get('class_type', prompt.get(node_id, {}).get('class_type'))}): "
                         f"{reason['message']}: {reason['details']}")
    return WorkflowValidationError("\n".join(lines), node_id=first,
                                   class_type=prompt.get(first, {}).get("class_type") if first else None,
                                   details=node_errors)


def _validate(prompt: dict, targets: list) -> None:
    from comfy.cmd.execution import validate_inputs, validate_prompt

    ok, error, _good, node_errors = validate_prompt(prompt)
    if not ok and error["type"] != "prompt_no_outputs":
        msg = f"prompt failed validation: {error['message']}" + (f": {error['details']}" if error.get("details") else "")
        raise _validation_error(prompt, msg, node_errors if isinstance(node_errors, dict) else {})
    if node_errors:
        raise _validation_error(prompt, "prompt failed validation", node_errors)
    # validate_prompt only validates OUTPUT_NODE nodes; test workflows may end in any node (e.g. KSamplerAdvanced)
    validated: dict = {}
    for t in targets:
        try:
            validate_inputs(prompt, t, validated)
        except Exception as ex:  # same handling as validate_prompt
            validated[t] = (False, [{"message": "Exception when validating node", "details": f"{type(ex).__name__}: {ex}"}], t)
    errors = {nid: {"errors": r[1], "class_type": prompt[nid]["class_type"]}
              for nid, r in validated.items() if r[0] is not True and r[1]}
    if errors:
        raise _validation_error(prompt, "prompt failed validation", errors)


class Session:
    """One host ``PromptExecutor`` kept across runs: its output cache and node instances survive between ``run``s."""

    def __init__(self):
        engine()
        from comfy.cmd.execution import PromptExecutor

        self.server = RecordingServer()
        self.executor = PromptExecutor(self.server)

    def clear(self) -> None:
        """Forget cached outputs and node instances (the next run re-executes everything)."""
        self.executor.reset()

    def run(self, prompt: dict, outputs: Optional[Iterable] = None, *,
            on_event: Optional[Callable[[Any, Any], None]] = None) -> RunResult:
        from comfy import interruption

        prompt = _normalise(prompt)
        targets = [str(o) for o in outputs] if outputs is not None else _targets(prompt)
        missing = [t for t in targets if t not in prompt]
        if missing:
            raise KeyError(f"outputs {missing} are not nodes of the prompt")
        _validate(prompt, targets)

        prompt_id = str(uuid.uuid4())
        server = self.server
        server.events, server.addressed = [], []
        server.last_prompt_id = prompt_id
        if on_event is not None:
            server.listeners.append(on_event)
        try:
            self.executor.execute(prompt, prompt_id, {"client_id": server.client_id}, execute_outputs=targets)
        finally:
            if on_event is not None:
                server.listeners.remove(on_event)
            # a flag set but never consumed must not leak into the next direct call (the next execute resets it too)
            interruption.interrupt_current_processing(False)

        result = self._result(prompt, server.events)
        if self.executor.success is not True:
            raise self._error(prompt, result)
        return result

    def _result(self, prompt: dict, events: list) -> RunResult:
        from comfy.cmd.execution import nodes

        ex = self.executor
        result = RunResult()
        for node_id, outs in ex.outputs.items():
            cls = nodes.NODE_CLASS_MAPPINGS.get(prompt.get(node_id, {}).get("class_type"))
            is_list = getattr(cls, "OUTPUT_IS_LIST", None) or [False] * len(outs)
            result[node_id] = tuple(o[0] if len(o) == 1 and not lst else o for o, lst in zip(outs, is_list))
        result.raw = ex.outputs
        result.ui = ex.outputs_ui
        result.events = list(events)
        result.executed = [d["node"] for e, d in events if e == "executing" and isinstance(d, dict) and d.get("node")]
        result.cached = next((list(d["nodes"]) for e, d in events if e == "execution_cached"), [])
        result.progress = [dict(d) for e, d in events if e == "progress"]
        return result

    def _error(self, prompt: dict, result: RunResult) -> WorkflowError:
        for event, data in reversed(self.executor.status_messages):
            if event == "execution_interrupted":
                return WorkflowInterrupted(
                    f"workflow interrupted in node {data['node_id']} ({data['node_type']})",
                    node_id=data["node_id"], class_type=data["node_type"],
                    exception_type="comfy.interruption.InterruptProcessingException", result=result)
            if event == "execution_error":
                tb = "".join(data.get("traceback") or [])
                return WorkflowError(
                    f"node {data['node_id']} ({data['node_type']}) failed: {data['exception_type']}: "
                    f"{data['exception_message']}\n--- traceback in the host ---\n{tb}",
                    node_id=data["node_id"], class_type=data["node_type"], exception_type=data["exception_type"],
                    exception_message=data["exception_message"], traceback=data.get("traceback") or (),
                    details=data, result=result)
        return WorkflowError(f"workflow failed without an error message: {self.executor.status_messages}", result=result)


def run_workflow(prompt: dict, outputs: Optional[Iterable] = None, *, session: Optional[Session] = None,
                 on_event: Optional[Callable[[Any, Any], None]] = None) -> RunResult:
    """Validate and execute an API-format prompt in the host's ``PromptExecutor`` (synchronously, in this process).

    ``outputs``: node ids to execute (with everything upstream); default: every node no other node consumes, plus
    every ``OUTPUT_NODE``. Without ``session`` a fresh executor runs it, so every node executes; pass a ``Session`` to
    reuse one executor (and its cache). ``on_event(event, data)`` sees every message the executor sends while it
    runs ("executing", "progress", "execution_cached", ...). Node ids may be ints; they become strings.
    """
    return (session or Session()).run(prompt, outputs, on_event=on_event)


# ------------------------------------------------------------------------------------------------------- interrupt
def interrupt() -> None:
    """What the host's "Cancel" does: ``comfy.model_management.interrupt_current_processing(True)``.

    The executor clears the flag when a run starts, so call this while a workflow runs (from ``on_event``, a node, or
    another thread). It takes effect at the next ``throw_exception_if_processing_interrupted()``: the next progress
    update, sampler step callback or node start.
    """
    from comfy import model_management

    model_management.interrupt_current_processing(True)


def interrupt_after(seconds: float) -> threading.Timer:
    """Trigger ``interrupt()`` from another thread after ``seconds``; ``.cancel()`` the returned timer if unused."""
    timer = threading.Timer(seconds, interrupt)
    timer.daemon = True
    timer.start()
    return timer


def interrupt_on_progress(n: int = 1, node: Optional[str] = None) -> Callable[[Any, Any], None]:
    """An ``on_event`` callback that interrupts once ``n`` progress updates (of ``node``, if given) were sent."""
    seen = [0]

    def listener(event, data):
        if event == "progress" and (node is None or data.get("node") == str(node)):
            seen[0] += 1
            if seen[0] == n:
                interrupt()

    return listener
