"""How the HPSv2 reference numbers in tests/test_scorers.py were made (development only, not a test).

Runs HPSv2's own OpenCLIP model code (tgxs002/HPSv2, hpsv2/src/open_clip, a checkout whose path is
given as argv[1]) on the tiny seeded checkpoint of tests/scorer_fixtures.py and prints cos(image, text)
for the fixed pixels and token ids. torchvision is absent here: its one import in open_clip/utils.py
(FrozenBatchNorm2d, used only to freeze ResNet towers) is satisfied by a stand-in module, and the
package __init__ (which imports the torchvision transforms) is bypassed by importing open_clip.model
from a copy whose __init__.py is empty.

    python tests/reference/hpsv2_reference.py /path/to/HPSv2/hpsv2/src   # with open_clip/__init__.py emptied
"""
import importlib.machinery
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _stub(name):
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = m
    return m


def main(src: str) -> None:
    _stub("torchvision")
    _stub("torchvision.ops")
    _stub("torchvision.ops.misc").FrozenBatchNorm2d = torch.nn.BatchNorm2d
    sys.path.insert(0, src)
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from scorer_fixtures import fixed_clip_ids, fixed_pixels, tiny_openclip_state
    from tiny_models import vocab_size

    model = CLIP(
        embed_dim=24,
        vision_cfg=CLIPVisionCfg(layers=2, width=40, head_width=20, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=vocab_size(), width=32, heads=2, layers=2),
        output_dict=True,
    ).eval()
    model.load_state_dict(tiny_openclip_state(0), strict=True)
    with torch.no_grad():
        out = model(fixed_pixels(), fixed_clip_ids())
    cos = (out["image_features"] * out["text_features"]).sum(-1)
    print("HPSv2 reference cos:", [round(float(c), 6) for c in cos])


if __name__ == "__main__":
    main(sys.argv[1])
