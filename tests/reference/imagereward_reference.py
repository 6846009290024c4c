"""How the ImageReward reference numbers in tests/test_scorers.py were made (development only, not a test).

Runs ImageReward's own BLIP code (THUDM/ImageReward, ImageReward/models/BLIP/{vit,med}.py, from a checkout
whose path is argv[1]) on the tiny seeded checkpoint of tests/scorer_fixtures.py, with transformers 4.44
(med.py uses 4.x APIs; a separate venv). timm and fairscale are absent: vit.py's imports from them are
stand-ins below: PatchEmbed (timm's: a patch-sized Conv2d, then flatten to tokens), DropPath and
checkpoint_wrapper (identities at inference), and init helpers never reached when weights are loaded.

    python -c "import sys; sys.path[:0] = ['tests', '.']; from pathlib import Path; \
        from scorer_fixtures import save_tiny_imagereward; save_tiny_imagereward(Path('/tmp/ir'))"   # project env
    python tests/reference/imagereward_reference.py /path/to/ImageReward/ImageReward/models/BLIP /tmp/ir/ImageReward.pt
"""
import importlib.machinery
import sys
import types
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


class PatchEmbed(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, norm_layer=None, **_):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def main(blip_dir: str, checkpoint: str) -> None:
    for n in ("timm", "timm.models", "fairscale", "fairscale.nn", "fairscale.nn.checkpoint"):
        _module(n)
    _module("timm.models.vision_transformer", _cfg=lambda **k: k, PatchEmbed=PatchEmbed)
    _module("timm.models.registry", register_model=lambda f: f)
    _module("timm.models.layers", trunc_normal_=lambda t, std=0.02: t, DropPath=lambda p: nn.Identity())
    _module("timm.models.helpers", named_apply=lambda *a, **k: None, adapt_input_conv=lambda *a, **k: None)
    _module("fairscale.nn.checkpoint.checkpoint_activations", checkpoint_wrapper=lambda m: m)
    sys.path.insert(0, blip_dir)  # vit.py and med.py as top-level modules: the package __init__ pulls in the rest
    from med import BertConfig, BertModel
    from vit import VisionTransformer
    from scorer_fixtures import fixed_pixels, tiny_imagereward_config

    cfg = tiny_imagereward_config()
    v, t = cfg["vision"], cfg["text"]
    vit = VisionTransformer(img_size=v["image_size"], patch_size=v["patch_size"], embed_dim=v["hidden_size"],
                            depth=v["num_hidden_layers"], num_heads=v["num_attention_heads"],
                            mlp_ratio=v["intermediate_size"] / v["hidden_size"]).eval()
    bert_cfg = BertConfig(vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], num_hidden_layers=t["num_hidden_layers"],
                          num_attention_heads=t["num_attention_heads"], intermediate_size=t["intermediate_size"],
                          max_position_embeddings=t["max_position_embeddings"], layer_norm_eps=t["layer_norm_eps"],
                          add_cross_attention=True)
    bert_cfg.encoder_width = v["hidden_size"]
    bert = BertModel(config=bert_cfg, add_pooling_layer=False).eval()
    state = torch.load(checkpoint, weights_only=True)  # tests/scorer_fixtures.tiny_imagereward_state(0)
    vit.load_state_dict({k[len("blip.visual_encoder."):]: x for k, x in state.items() if k.startswith("blip.visual_encoder.")})
    bert.load_state_dict({k[len("blip.text_encoder."):]: x for k, x in state.items() if k.startswith("blip.text_encoder.")})
    mlp = nn.Sequential(nn.Linear(t["hidden_size"], 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1)).eval()
    mlp.load_state_dict({k[len("mlp.layers."):]: x for k, x in state.items() if k.startswith("mlp.")})
    ids = torch.tensor([[2, 25, 6, 11, 15, 3] + [0] * 29, [2, 48, 75, 3] + [0] * 31])
    mask = (ids != 0).long()
    with torch.no_grad():
        image_embeds = vit(fixed_pixels())
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        out = bert(ids, attention_mask=mask, encoder_hidden_states=image_embeds, encoder_attention_mask=atts, return_dict=True)
        r = (mlp(out.last_hidden_state[:, 0]).squeeze(-1) - cfg["reward_mean"]) / cfg["reward_std"]
    print("ImageReward reference rewards:", [round(float(x), 6) for x in r])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
