"""modules.devices: the WebUI's torch device and dtype (CPU here)."""
import torch

cpu = torch.device("cpu")
device = cpu
dtype = torch.float32
