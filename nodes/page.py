"""What the pack shows on the ComfyUI page: its warnings as toasts, the Inversion Report's table and plot on the node.

Warnings on the page, not only in the server console:

Most users never read the console that ComfyUI logs to (the desktop app hides it, a remote or cloud server keeps it on
another machine), so a warning logged only there is, for them, a silent wrong result. Each warning is therefore also
sent to the browser as the event ``EVENT`` with the id of the node that was running; ``web/inversion_page.js``
shows it as a toast naming that node. The event goes to the client that queued the prompt (the host's
``client_id``; every client when the prompt was queued without one), through the host's own ``send_sync``.

Without a host server (scripts, the benchmark, a bare executor) nothing is sent: the log line is the warning.

The Inversion Report's outputs are only seen where something downstream shows them, and the shipped graphs leave
them unconnected; ``preview_image`` saves its plot where the host's PreviewImage saves (the temp folder), so the node
shows it itself, and the web script shows the table in a read-only text box on the node.
"""
from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Any, Optional

import numpy as np
import torch

EVENT = "comfyui-inversion.warning"
# toasts per prompt: a graph that warns on every item of a large batch must not bury the page; the rest are counted
# in one last toast that points at the console
MAX_TOASTS = 8

log = logging.getLogger("comfyui-inversion")
_sent: dict = {"prompt": None, "count": 0, "seen": set()}


def _host_server() -> Optional[Any]:
    """The running host's server: upstream ComfyUI's ``server.PromptServer.instance`` (its ``main.py`` imports the
    ``server`` module before any custom node; it is looked up, never imported, so a foreign module of that name is
    not loaded), else the PyPI fork's execution context server. None when neither is there."""
    upstream = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if upstream is not None and callable(getattr(upstream, "send_sync", None)):
        return upstream
    try:
        from comfy.execution_context import current_execution_context
    except ImportError:
        return None
    fork = getattr(current_execution_context(), "server", None)
    return fork if callable(getattr(fork, "send_sync", None)) else None


def show_in_ui(message: str) -> None:
    """Send ``message`` to the page as a toast of the running node; never raises (a warning must not fail a run)."""
    server = _host_server()
    if server is None:
        return
    try:
        prompt = getattr(server, "last_prompt_id", None)
        if prompt != _sent["prompt"]:
            _sent.update(prompt=prompt, count=0, seen=set())
        node = getattr(server, "last_node_id", None)
        if (node, message) in _sent["seen"]:   # the same node's warning again in one prompt (per batch item ...)
            return
        _sent["seen"].add((node, message))
        _sent["count"] += 1
        if _sent["count"] > MAX_TOASTS + 1:
            return
        if _sent["count"] == MAX_TOASTS + 1:
            message = "more warnings in this run: see the ComfyUI console (log lines start with [comfyui-inversion])"
        data = {"message": message, "node": node, "prompt_id": prompt}
        server.send_sync(EVENT, data, getattr(server, "client_id", None))
    except Exception as err:  # noqa: BLE001 - the warning is already in the log; the page is a courtesy
        log.debug("could not send a warning to the page: %s", err)


def _host_folder_paths() -> Optional[Any]:
    """The host's folder_paths module: upstream's top-level ``folder_paths`` (imported by its ``main.py``; looked up,
    not imported), else the PyPI fork's ``comfy.cmd.folder_paths``; None for neither."""
    module = sys.modules.get("folder_paths")
    if module is None:
        try:
            from comfy.cmd import folder_paths as module
        except ImportError:
            return None
    return module if callable(getattr(module, "get_temp_directory", None)) else None


def preview_image(image: torch.Tensor, prefix: str = "inversion_report") -> list:
    """``image`` (IMAGE [1, H, W, 3] in 0..1) saved as a PNG in the host's temp folder, as the ``ui`` "images" entry
    the page shows on a node (the form PreviewImage returns); [] where the host's folders are not found."""
    from PIL import Image

    folders = _host_folder_paths()
    if folders is None:
        return []
    temp = folders.get_temp_directory()
    os.makedirs(temp, exist_ok=True)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}.png"
    pixels = (image[0].detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(temp, name))
    return [{"filename": name, "subfolder": "", "type": "temp"}]
