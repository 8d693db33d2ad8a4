"""Let PyPI's CUDA build of torchvision import on a CPU-only torch (test environment only; never part of the pack).

torchvision's import registers fake kernels for ops its C extension would define; on CPU torch that extension does not
load, so the schemas are missing and the import fails. Defining the two schemas it looks up first is enough.
"""
import torch

for _op in ("nms", "qnms"):
    try:
        torch.library.define(f"torchvision::{_op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined (e.g. a real torchvision extension loaded first)
        pass
