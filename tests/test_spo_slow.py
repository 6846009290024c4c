"""Real-size random-weight SD-1.5 (shipped configs): one SPO round and one training step. Slow."""
import json
import os

import pytest
import torch

from spo_fixtures import Brightness, CountingUNet
from tiny_models import SCHEDULER, write_tokenizer
from trainer.configs import config_dir
from trainer.models import load_model
from trainer.spo.config import build_config
from trainer.spo.rollout import spo_round
from trainer.spo.step import transition_loss
from trainer.spo.train import add_lora


@pytest.fixture(scope="module")
def real_size_sd15(tmp_path_factory):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("sd15-random")
    cfgs = config_dir("sd15")
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfgs / "unet")).save_pretrained(root / "unet")
    AutoencoderKL.from_config(AutoencoderKL.load_config(cfgs / "vae")).save_pretrained(root / "vae")
    text_cfg = CLIPTextConfig.from_pretrained(cfgs / "text_encoder")
    text_cfg.vocab_size = 514  # our offline character-level tokenizer
    text_cfg.bos_token_id, text_cfg.eos_token_id = 512, 513
    CLIPTextModel(text_cfg).save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer", max_length=77)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    return root


@pytest.mark.slow
def test_real_size_sd15_round_and_step(real_size_sd15):
    model = load_model(real_size_sd15, family="sd15")
    assert sum(p.numel() for p in model.unet.parameters()) == pytest.approx(859.5e6, rel=1e-3)
    model.resolution = 64  # 8×8 latents keep the CPU run short; the architecture is the real one
    cfg = build_config("sd15", overrides={"sampling.batch_size": 1, "sampling.k": 2, "sampling.threshold": 0.0, "sampling.branch_start": 17})
    counter = CountingUNet(model.unet)
    model.unet = counter
    r = spo_round(model, Brightness(), ["a cat"], cfg.sampling, torch.Generator().manual_seed(0))
    model.unet = counter.inner
    assert len(counter.calls) == 20 and len(r.transitions) == 3
    params = add_lora(model, cfg.lora)
    assert sum(p.numel() for p in params) == 797_184  # rank 4 on to_q/k/v/out of SD-1.5's 16 transformer blocks
    loss, _ = transition_loss(model, model.unet, r.transitions, r.embeds, model.uncond_embeds(1), 20, 5.0, 1.0, 10.0, 0.1)
    loss.backward()
    assert all(p.grad is not None for p in params)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SPO_SD15_SINGLE_FILE"), reason="set SPO_SD15_SINGLE_FILE to an SD-1.5 .safetensors (e.g. the random one the ComfyUI integration test builds)")
def test_single_file_sd15_with_shipped_configs(tmp_path):
    """An original-layout SD-1.5 checkpoint loads offline from the shipped configs plus a tokenizer."""
    import shutil

    cfg = tmp_path / "sd15"
    shutil.copytree(config_dir("sd15"), cfg)
    write_tokenizer(cfg / "tokenizer", max_length=77)
    (cfg / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False,
    }))
    model = load_model(os.environ["SPO_SD15_SINGLE_FILE"], config_dir=cfg)
    assert model.family.name == "sd15" and model.resolution == 512
    assert sum(p.numel() for p in model.unet.parameters()) == 859_520_964
    model.resolution = 64
    counter = CountingUNet(model.unet)
    model.unet = counter
    cfgs = build_config("sd15", overrides={"sampling.batch_size": 1, "sampling.k": 2, "sampling.branch_start": 18})
    spo_round(model, Brightness(), ["a cat"], cfgs.sampling, torch.Generator().manual_seed(0))
    assert len(counter.calls) == 20
