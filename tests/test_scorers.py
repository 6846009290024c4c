"""trainer.scorers: each loader reads its released key layout strictly, computes what the original
computes, and every scorer with trained weights ranks a clean ShapesWorld render above a degraded one."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from scorer_fixtures import (
    clip_to_openclip, fitted_imagereward, fixed_clip_ids, fixed_pixels, save_tiny_hpsv2, save_tiny_imagereward,
    tiny_imagereward_config, tiny_imagereward_state, tiny_openclip_config, tiny_openclip_state,
)
from trainer.scorers import ScorerError, ScorerSpec, load_scorer
from trainer.scorers.aesthetic import expected_shapes as aesthetic_shapes
from trainer.scorers.aesthetic import load_aesthetic
from trainer.scorers.hpsv2 import load_hpsv2
from trainer.scorers.imagereward import load_imagereward
from trainer.shapes import heldout_captions, render_captions, weights_dir

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import imagereward_by_hand  # noqa: E402

# HPSv2's own OpenCLIP code (tgxs002/HPSv2 @ its main branch, hpsv2/src/open_clip) on the seeded tiny checkpoint
# of scorer_fixtures, fixed pixels and token ids: `python tests/reference/hpsv2_reference.py <hpsv2/src>`.
HPSV2_REFERENCE_COS = [0.00711, -0.161563]
# ImageReward's own BLIP vit.py + med.py (THUDM/ImageReward @ main; transformers 4.44 in a separate venv, timm and
# fairscale imports replaced by stand-ins) on the same tiny checkpoint, pixels and these token ids, then the reward
# MLP and z-score of ImageReward.score: `python tests/reference/imagereward_reference.py <BLIP dir> <ckpt>`.
IMAGEREWARD_IDS = torch.tensor([[2, 25, 6, 11, 15, 3] + [0] * 29, [2, 48, 75, 3] + [0] * 31])
IMAGEREWARD_REFERENCE = [-0.946692, -0.895503]


def test_hpsv2_matches_the_original_openclip_on_the_same_tiny_weights(tmp_path):
    scorer = load_hpsv2(save_tiny_hpsv2(tmp_path), config=tiny_openclip_config())
    m = scorer.model
    img = m.image_embeds(fixed_pixels(), torch.zeros(2, dtype=torch.long))
    txt = m.text_embeds(fixed_clip_ids())
    cos = (img / img.norm(dim=-1, keepdim=True) * txt / txt.norm(dim=-1, keepdim=True)).sum(-1)
    assert cos.tolist() == pytest.approx(HPSV2_REFERENCE_COS, abs=2e-5)


def test_hpsv2_score_is_the_cosine_of_the_preprocessed_image_and_prompt(tmp_path):
    from trainer.spm.preprocess import clip_preprocess

    scorer = load_hpsv2(save_tiny_hpsv2(tmp_path), config=tiny_openclip_config())
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompts = ["a red square", "a blue circle"]
    m = scorer.model
    tok = m.get_tokenizer()(prompts, padding="max_length", max_length=16, return_tensors="pt")
    img = m.model.get_image_features(pixel_values=clip_preprocess(images, m.preprocess))
    txt = m.model.get_text_features(input_ids=tok.input_ids)
    img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
    want = torch.nn.functional.cosine_similarity(img, txt)
    assert scorer.score(images, prompts).tolist() == pytest.approx(want.tolist(), abs=1e-5)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_hpsv2_loader_is_strict(tmp_path, damage):
    state = tiny_openclip_state()
    if damage == "missing":
        del state["visual.ln_post.bias"]
    elif damage == "extra":
        state["visual.attn_pool.query"] = torch.zeros(3)
    else:
        state["text_projection"] = torch.zeros(5, 5)
    save_tiny_hpsv2(tmp_path)
    torch.save({"state_dict": state}, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(ScorerError, match="HPS_v2_compressed.pt"):
        load_hpsv2(tmp_path / "HPS_v2_compressed.pt", config=tiny_openclip_config())


def test_hpsv2_without_tokenizer_names_the_flag(tmp_path):
    torch.save({"state_dict": tiny_openclip_state()}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(ScorerError, match="--assets.clip_tokenizer"):
        load_hpsv2(tmp_path / "HPS_v2.1_compressed.pt", config=tiny_openclip_config())


def test_imagereward_matches_blip_written_out_by_hand(tmp_path):
    scorer = load_imagereward(save_tiny_imagereward(tmp_path), config=tiny_imagereward_config())
    prompts = ["a red circle on a blue background, top left", "purple diamond"]
    enc = scorer.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert enc.input_ids.shape == (2, 35) and int(enc.input_ids[0, 0]) == scorer.tokenizer.cls_token_id
    want = imagereward_by_hand.reward(tiny_imagereward_state(), tiny_imagereward_config(), fixed_pixels(), enc.input_ids, enc.attention_mask)
    got = scorer.reward(fixed_pixels(), enc.input_ids, enc.attention_mask)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-5)
    assert float((got - want).abs().max()) < 1e-5 and float(got.std()) > 1e-3  # not a constant


def test_imagereward_matches_the_original_blip_code_on_the_same_tiny_weights(tmp_path):
    scorer = load_imagereward(save_tiny_imagereward(tmp_path), config=tiny_imagereward_config())
    got = scorer.reward(fixed_pixels(), IMAGEREWARD_IDS, (IMAGEREWARD_IDS != 0).long())
    assert got.tolist() == pytest.approx(IMAGEREWARD_REFERENCE, abs=2e-5)


def _openai_clip_pil_transform(images: torch.Tensor, n: int) -> torch.Tensor:
    """OpenAI CLIP's `_transform(n)` on the PIL picture of each image (what `ImageReward.score` and the LAION
    aesthetic predictor's `clip.load` preprocessing run): torchvision's
    Resize(n, BICUBIC) on a PIL image (PIL's bicubic, antialiased; the long side truncated), CenterCrop(n) (offsets
    rounded), ToTensor, OpenAI CLIP mean/std. Written with PIL alone (torchvision does not import here)."""
    import numpy as np
    from PIL import Image

    from trainer.spm.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    out = []
    for img in images:
        pic = Image.fromarray(((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
        w, h = pic.size
        ow, oh = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
        pic = pic.resize((ow, oh), Image.BICUBIC)
        top, left = int(round((oh - n) / 2.0)), int(round((ow - n) / 2.0))
        pic = pic.crop((left, top, left + n, top + n))
        out.append(torch.from_numpy(np.asarray(pic).copy()).permute(2, 0, 1).float() / 255)
    x = torch.stack(out)
    return (x - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


def _upscaled_render(renders: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """ShapesWorld renders [B, 3, 64, 64] on the uint8 grid (so their PIL picture is the same image), doubled
    in size and cut to h × w: hard edges to resample. Returns Tensor[B, 3, h, w] in [−1, 1]."""
    on_grid = ((renders + 1) * 127.5).round() / 127.5 - 1
    return on_grid.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :h, :w]


@pytest.mark.parametrize("width", [96, 98])  # 98: resized to 39 wide, a crop offset of 3.5 that CenterCrop rounds to 4
def test_imagereward_sees_images_as_its_pil_transform_makes_them(tmp_path, width):
    """Shrinking a detailed picture is where preprocessing recipes part: PIL's bicubic filters (antialias),
    a plain bicubic interpolation aliases. Images on the uint8 grid, so the PIL picture is the same image."""
    scorer = load_imagereward(save_tiny_imagereward(tmp_path), config=tiny_imagereward_config())
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (2, 3, 80, width), generator=g).float() / 127.5 - 1  # noise: all detail
    shapes = render_captions(heldout_captions()[:1], torch.zeros(1), seed=3)[0]  # a degraded render, 64 px
    images[1] = _upscaled_render(shapes, 80, width)
    want = _openai_clip_pil_transform(images, 32)
    from trainer.spm.preprocess import clip_preprocess

    gap = float((clip_preprocess(images, scorer.preprocess) - want).abs().max())
    assert gap < 0.05, gap  # PIL rounds its output to uint8 (1/255 ≈ 0.015 after /std); unfiltered bicubic: > 1
    prompts = ["a red circle", "a blue square"]
    enc = scorer.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert scorer.score(images, prompts).tolist() == pytest.approx(scorer.reward(want, enc.input_ids, enc.attention_mask).tolist(), abs=5e-3)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_imagereward_loader_is_strict(tmp_path, damage):
    state = tiny_imagereward_state()
    if damage == "missing":
        del state["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    elif damage == "extra":
        state["blip.text_decoder.cls.predictions.bias"] = torch.zeros(3)
    else:
        state["mlp.layers.7.weight"] = torch.zeros(2, 16)
    save_tiny_imagereward(tmp_path)
    torch.save(state, tmp_path / "ImageReward.pt")
    with pytest.raises(ScorerError, match="ImageReward.pt"):
        load_imagereward(tmp_path / "ImageReward.pt", config=tiny_imagereward_config())


def _clip_dir():
    return weights_dir("preference")  # a trained transformers CLIP folder with its processor settings


def test_aesthetic_is_the_mlp_on_the_normalised_clip_image_embedding(tmp_path):
    from transformers import CLIPModel

    from trainer.spm.preprocess import PreprocessConfig, clip_preprocess

    clip = CLIPModel.from_pretrained(str(_clip_dir())).eval()
    dim = clip.config.projection_dim
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in aesthetic_shapes(dim).items()}
    torch.save(state, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    scorer = load_aesthetic(tmp_path / "sac+logos+ava1-l14-linearMSE.pth", clip=str(_clip_dir()))
    images = render_captions(heldout_captions()[:3], torch.tensor([1.0, 0.5, 0.0]), seed=1)
    size = clip.config.vision_config.image_size
    with torch.no_grad():
        emb = clip.get_image_features(pixel_values=clip_preprocess(images, PreprocessConfig(size)))
        emb = getattr(emb, "pooler_output", emb)
        x = emb / emb.norm(dim=-1, keepdim=True)
        for i in (0, 2, 4, 6, 7):  # the released stack has no activations
            x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    assert scorer.score(images).tolist() == pytest.approx(x.squeeze(-1).tolist(), abs=1e-5)


def test_aesthetic_sees_images_as_the_clip_packages_pil_transform_makes_them(tmp_path):
    """The predictor was fitted on `clip.load`'s preprocessing, not the CLIP folder's processor: at 80×99 the
    resized side (79) exceeds the crop (64) by an odd number, where CenterCrop rounds the offset and HF
    truncates it. Renders, not noise: PIL clips to uint8 between its two resize passes, torch does not."""
    from trainer.spm.preprocess import PreprocessConfig, clip_preprocess

    torch.save({k: torch.zeros(s) for k, s in aesthetic_shapes(64).items()}, tmp_path / "mlp.pth")  # the preference CLIP projects to 64
    scorer = load_aesthetic(tmp_path / "mlp.pth", clip=str(_clip_dir()))
    size = scorer.clip.preprocess.image_size
    renders = render_captions(heldout_captions()[:2], torch.tensor([1.0, 0.0]), seed=3)  # 64 px
    images = _upscaled_render(renders, 80, 99)
    want = _openai_clip_pil_transform(images, size)
    gap = float((clip_preprocess(images, scorer.clip.preprocess) - want).abs().max())
    assert gap < 0.1, gap  # PIL rounds and clips to uint8 between its passes: a few levels (≈ 0.015 each after /std) at edges
    truncated = clip_preprocess(images, PreprocessConfig(size, method="clip"))
    assert float((truncated - want).abs().max()) > 0.5  # the crop one pixel off


def test_aesthetic_loader_is_strict_and_needs_its_clip(tmp_path):
    state = {k: torch.zeros(s) for k, s in aesthetic_shapes(768).items()}
    torch.save(state, tmp_path / "mlp.pth")
    with pytest.raises(ScorerError, match="--assets.aesthetic_clip"):
        load_aesthetic(tmp_path / "mlp.pth")
    del state["layers.6.bias"]
    torch.save(state, tmp_path / "mlp.pth")
    with pytest.raises(ScorerError, match="1 missing"):
        load_aesthetic(tmp_path / "mlp.pth", clip=str(_clip_dir()))


def test_clipscore_is_100_cos_clipped_at_zero():
    from transformers import CLIPModel

    from trainer.spm.weights import _processor_settings
    from trainer.spm.preprocess import clip_preprocess

    scorer = load_scorer(ScorerSpec.parse("clipscore=shapes-preference"))
    clip = CLIPModel.from_pretrained(str(_clip_dir())).eval()
    caps = heldout_captions()[:4]
    images = render_captions(caps, torch.ones(4), seed=2)
    images[3] = -images[3]  # an inverted image: low or negative similarity
    tok = scorer.model.get_tokenizer()(caps, padding=True, return_tensors="pt")
    with torch.no_grad():
        img = clip.get_image_features(pixel_values=clip_preprocess(images, _processor_settings(_clip_dir(), 64)))
        txt = clip.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
    img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
    want = (100 * torch.nn.functional.cosine_similarity(img, txt)).clamp_min(0)
    assert scorer.score(images, caps).tolist() == pytest.approx(want.tolist(), abs=1e-3)


def test_spec_parsing():
    assert ScorerSpec.parse("hpsv2=/x/HPS.pt") == ScorerSpec("hpsv2", "hpsv2", "/x/HPS.pt")
    assert ScorerSpec.parse("hps21=hpsv2:/x/HPS_v2.1.pt") == ScorerSpec("hps21", "hpsv2", "/x/HPS_v2.1.pt")
    assert ScorerSpec.parse("shapes-aesthetic") == ScorerSpec("shapes-aesthetic", "shapes-aesthetic")
    for bad in ("nonsense=/x", "pickscore", "we ird=spm:/x"):
        with pytest.raises(ScorerError):
            ScorerSpec.parse(bad)


# -- every scorer ranks a clean render above a degraded one (trained ShapesWorld weights) -------------
def _hpsv2_from_preference(tmp_path) -> Path:
    """The shipped preference CLIP written as an HPSv2 checkpoint (OpenCLIP layout) with its tokenizer."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(str(_clip_dir()))
    torch.save({"state_dict": clip_to_openclip(clip)}, tmp_path / "HPS_v2_compressed.pt")
    return tmp_path / "HPS_v2_compressed.pt"


def _aesthetic_fitted(tmp_path) -> Path:
    """An aesthetic MLP in the released layout whose readout is a least-squares fit of ShapesWorld's
    ground-truth aesthetic on the preference CLIP's normalised embeddings of training renders."""
    from trainer.shapes import aesthetic, train_captions
    from trainer.spm.weights import spm_from_clip

    clip = spm_from_clip(_clip_dir(), step_aware=False).eval()
    caps = train_captions()[::9][:96]
    q = torch.rand(len(caps), generator=torch.Generator().manual_seed(5))
    images = render_captions(caps, q, seed=11)
    with torch.no_grad():
        x = clip.encode_images(images, torch.zeros(len(caps), dtype=torch.long))
    design = torch.cat([x, torch.ones(len(caps), 1)], 1)
    w = torch.linalg.lstsq(design, aesthetic(images)[:, None], driver="gelsd").solution[:, 0]
    dim = x.shape[1]
    state = {k: torch.zeros(s) for k, s in aesthetic_shapes(dim).items()}
    state["layers.0.weight"][0] = w[:dim]  # unit 0 carries the fit through the linear stack
    state["layers.0.bias"][0] = w[dim]
    for i in (2, 4, 6, 7):
        state[f"layers.{i}.weight"][0, 0] = 1.0
    torch.save(state, tmp_path / "aesthetic.pth")
    return tmp_path / "aesthetic.pth"


SPECS = [
    "shapes-aesthetic", "shapes-alignment", "shapes-utility", "shapes-preference", "shapes-spm",
    "pickscore=shapes-preference", "clipscore=shapes-preference", "spm=shapes-spm", "hpsv2=HPSV2", "aesthetic=AESTHETIC",
    "imagereward=IMAGEREWARD",
]


def _clean_and_degraded_scores(scorer) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of six held-out captions rendered clean (quality 1) and degraded (quality 0, same scenes and placement)."""
    caps = heldout_captions()[:6]
    clean = render_captions(caps, torch.ones(6), seed=3)
    degraded = render_captions(caps, torch.zeros(6), seed=3)
    return scorer.score(clean, caps, None), scorer.score(degraded, caps, None)


@pytest.mark.parametrize("spec", SPECS)
def test_every_scorer_ranks_a_clean_render_above_a_degraded_one(tmp_path, monkeypatch, spec):
    from types import SimpleNamespace

    import trainer.scorers.imagereward as imagereward

    assets = SimpleNamespace(clip_tokenizer=str(_clip_dir()), bert_tokenizer="", aesthetic_clip=str(_clip_dir()))
    if spec.endswith("HPSV2"):
        spec = f"hpsv2={_hpsv2_from_preference(tmp_path)}"
    if spec.endswith("AESTHETIC"):
        spec = f"aesthetic={_aesthetic_fitted(tmp_path)}"
    if spec.endswith("IMAGEREWARD"):
        # The loader builds in the released ViT-L/BERT-base sizes; the ShapesWorld-trained model has the tiny ones.
        monkeypatch.setattr(imagereward, "default_config", tiny_imagereward_config)
        spec = f"imagereward={fitted_imagereward(tmp_path)}"
        assets.bert_tokenizer = str(tmp_path / "init" / "tokenizer")  # not beside the fitted file: the flag finds it
        # The same network before training (its seeded random weights) does not pass: clean wins on 3 of the 6,
        # rewards all near −0.9; trained, clean wins on all 6 by 3 to 14 (e.g. −20.5 vs −24.8).
        a, b = _clean_and_degraded_scores(load_scorer(ScorerSpec.parse(f"imagereward={tmp_path / 'init' / 'ImageReward.pt'}"), assets=assets))
        assert int((a > b).sum()) < 6, f"untrained ImageReward already ranks: clean {a.tolist()} vs degraded {b.tolist()}"
    parsed = ScorerSpec.parse(spec)
    if parsed.kind == "hpsv2":  # the ShapesWorld CLIP's own sizes instead of ViT-H/14
        from transformers import CLIPConfig

        scorer = load_hpsv2(parsed.path, config=CLIPConfig.from_pretrained(str(_clip_dir())), tokenizer=str(_clip_dir()))
    else:
        scorer = load_scorer(parsed, assets=assets)
    a, b = _clean_and_degraded_scores(scorer)
    assert bool((a > b).all()), f"{spec}: clean {a.tolist()} vs degraded {b.tolist()}"
