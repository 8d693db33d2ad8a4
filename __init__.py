"""ComfyUI Inversion: turn an image latent back into the noise a diffusion model regenerates it from.

ComfyUI imports this file when the folder sits in ``custom_nodes/``; it registers the node classes and the web folder
whose script shows the pack's warnings on the page (nodes/page.py).
"""
import logging

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__version__ = "0.1.0"
WEB_DIRECTORY = "./web"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

logging.getLogger(__name__).info("comfyui-inversion %s: %d nodes", __version__, len(NODE_CLASS_MAPPINGS))
