"""The optional training dependencies (PyTorch, segmentation-models-pytorch), imported lazily."""

from typing import Optional

REQUIREMENTS = "torch==2.14.1 torchvision==0.29.1 segmentation-models-pytorch==0.6.0"
INSTALL_HINT = (
    "Training needs PyTorch and segmentation-models-pytorch, which the plugin does not install. Into the Python "
    "that runs QGIS: `python3 -m pip install -r requirements-train.txt` (CPU wheels), i.e. "
    f"`pip install {REQUIREMENTS}`; for NVIDIA GPUs install the CUDA build of the same torch version first "
    "(see https://pytorch.org/get-started/locally/, e.g. `--index-url https://download.pytorch.org/whl/cu126`), "
    "then the rest. See docs/training.md."
)


def missing() -> Optional[str]:
    """None when torch and smp import, else the text of what is missing."""
    try:
        require_torch()
    except Exception as exc:  # noqa: BLE001 - GullySegError, or a torch that fails to load
        return str(exc)
    return None


def require_torch() -> tuple:
    """(torch, segmentation_models_pytorch), or a GullySegError that says what to install."""
    try:
        import segmentation_models_pytorch as smp
        import torch
    except ImportError as exc:
        from ..errors import GullySegError

        raise GullySegError(f"{exc.name or 'torch'} is not installed. {INSTALL_HINT}") from None
    return torch, smp
