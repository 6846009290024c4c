"""The few ComfyUI services the nodes use, reached only when a node runs (importing the pack
outside ComfyUI, e.g. under pytest or pip, must not need ComfyUI)."""
from __future__ import annotations

import os

import torch

from .errors import NodeInputError

SPM_FOLDER = "spo"
SPM_EXTENSIONS = {".bin", ".safetensors", ".pt", ".pth"}  # .pt/.pth: HPSv2, ImageReward, aesthetic (Load Scorer)


def register_model_folders() -> None:
    """Add models/spo (SPM files) to ComfyUI's model folders; a no-op outside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return
    folder_paths.add_model_folder_path(SPM_FOLDER, os.path.join(folder_paths.models_dir, SPM_FOLDER))
    paths, exts = folder_paths.folder_names_and_paths[SPM_FOLDER]
    exts.update(SPM_EXTENSIONS)


def filename_list(folder: str) -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list(folder)


def full_path(folder: str, name: str, node: str) -> str:
    """Absolute path of `name` in a ComfyUI model folder, or a one-line error naming the folder."""
    import folder_paths

    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise NodeInputError(f"{node}: {name!r} is not in models/{folder}; put the file there and refresh")
    return path


def torch_device() -> torch.device:
    """ComfyUI's compute device (CPU when run with --cpu)."""
    try:
        import comfy.model_management
    except ImportError:
        return torch.device("cpu")
    return comfy.model_management.get_torch_device()


def show_text_on_node(text: str, node_id: str | None) -> None:
    """Display `text` on the node in the ComfyUI frontend (progress-text message, ComfyUI ≥ 0.3.3x).

    Older ComfyUI, or a run without the web server (scripts, tests), has no such channel; the same
    text still reaches the history and API clients through the node's "ui" output.
    """
    if node_id is None:
        return
    try:
        from server import PromptServer

        send = PromptServer.instance.send_progress_text
    except (ImportError, AttributeError):
        return
    send(text, node_id)
