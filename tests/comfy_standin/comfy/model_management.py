"""Stand-in of comfy.model_management: the compute device."""
import torch


def get_torch_device():
    return torch.device("cpu")
