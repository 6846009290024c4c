"""The SPM network: identity at init, adaLN semantics, timestep features, scoring API, bad input."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from spm_fixtures import randomize_adaln, tiny_clip, tokenizer_dir
from trainer.spm.model import AdaLNEncoderLayer, StepAwarePreferenceModel, timestep_features
from trainer.spm.preprocess import PreprocessConfig, clip_preprocess


@pytest.fixture(scope="module")
def base():
    return tiny_clip(seed=0)


@pytest.fixture()
def spm(base, tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir(tmp_path)))
    return StepAwarePreferenceModel(clip=copy.deepcopy(base), tokenizer=tok).eval()


def test_timestep_features_match_formula():
    t = torch.tensor([0, 1, 500, 999])
    f = timestep_features(t, dim=8, max_period=10000)
    for row, tv in zip(f, t.tolist()):
        expected = [math.cos(tv * 10000 ** (-k / 4)) for k in range(4)] + [math.sin(tv * 10000 ** (-k / 4)) for k in range(4)]
        assert torch.allclose(row, torch.tensor(expected), atol=1e-4)


def test_identity_at_init_equals_base_clip(base, spm):
    """Fresh adaLN (gates 1, shift/scale 0): image and text embeddings are the base CLIP's for any t."""
    px = torch.randn(4, 3, 32, 32)
    ids = torch.randint(0, 500, (3, 10))
    with torch.no_grad():
        ref_img = base.get_image_features(pixel_values=px).pooler_output
        ref_txt = base.get_text_features(input_ids=ids).pooler_output
        for t in ([0, 0, 0, 0], [1, 250, 750, 999]):
            img = spm.image_embeds(px, torch.tensor(t))
            assert (img - ref_img).abs().max() < 1e-6
        assert (spm.text_embeds(ids) - ref_txt).abs().max() < 1e-6
    # the adaLN really is the identity initialisation, not an accident of the inputs
    lin = spm.model.vision_model.encoder.layers[0].adaLN_modulation[1]
    d = lin.in_features
    assert lin.weight.abs().max() == 0
    assert torch.equal(lin.bias.view(6, d)[[2, 5]], torch.ones(2, d))
    assert lin.bias.view(6, d)[[0, 1, 3, 4]].abs().max() == 0


def test_untrained_spm_scores_like_base_clip_for_every_t(base, spm):
    images = torch.rand(3, 3, 40, 48) * 2 - 1
    prompts = ["a red square", "a blue circle", "a red square"]
    tok = spm.get_tokenizer()
    enc = tok(prompts, padding=True, return_tensors="pt")
    px = clip_preprocess(images, spm.preprocess)
    with torch.no_grad():
        ref = base(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=px).logits_per_image.diagonal()
    for t in (0, 500, 999):
        assert torch.allclose(spm.score(images, prompts, t), ref, atol=1e-5)


def test_adaln_layer_follows_the_dit_formula(base):
    """Distinct per-chunk biases: the layer must compute x + g1·Attn(LN1(x)(1+s1)+b1), then the MLP branch."""
    layer = copy.deepcopy(base.vision_model.encoder.layers[0])
    ada = AdaLNEncoderLayer(layer)
    d = ada.embed_dim
    with torch.no_grad():
        ada.adaLN_modulation[1].bias.copy_(torch.arange(6).repeat_interleave(d).float() * 0.1 + 0.05)
    x, cond = torch.randn(2, 5, d), torch.randn(2, d)
    with torch.no_grad():
        chunks = ada.adaLN_modulation(cond).chunk(6, dim=-1)  # weight is zero: each chunk is its bias
        sh1, sc1, g1, sh2, sc2, g2 = [c[:, None] for c in chunks]
        h = x + g1 * layer.self_attn(hidden_states=layer.layer_norm1(x) * (1 + sc1) + sh1)[0]
        expected = h + g2 * layer.mlp(layer.layer_norm2(h) * (1 + sc2) + sh2)
        assert torch.allclose(ada(x, cond), expected, atol=1e-6)
        assert torch.allclose(sc1, torch.full_like(sc1, 0.15))  # chunk order: shift, scale, gate, ...


def test_trained_spm_depends_on_timestep(spm):
    randomize_adaln(spm, std=0.2)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    s0 = spm.score(images, ["a", "b"], 0)
    s9 = spm.score(images, ["a", "b"], 900)
    assert (s0 - s9).abs().min() > 1e-4


def test_step_agnostic_variant_ignores_timesteps(base, tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir(tmp_path)))
    agn = StepAwarePreferenceModel(clip=copy.deepcopy(base), step_aware=False, tokenizer=tok).eval()
    assert not any("adaLN" in k or "t_embedder" in k for k in agn.state_dict())
    assert all(k.startswith("model.") for k in agn.state_dict())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(agn.score(images, ["x", "y"], 0), agn.score(images, ["x", "y"], [999, 3]))


def test_each_prompt_is_encoded_once_per_batch(spm, monkeypatch):
    seen = []
    real = spm.text_embeds

    def counting(ids, mask=None):
        seen.append(ids.shape[0])
        return real(ids, mask)

    monkeypatch.setattr(spm, "text_embeds", counting)
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    prompts = ["cat"] * 4 + ["dog"] * 2
    scores = spm.score(images, prompts, 10)
    assert seen == [2]
    # and the shared embedding gives the same score as scoring one by one
    singles = torch.cat([spm.score(images[i : i + 1], [prompts[i]], 10) for i in range(6)])
    assert torch.allclose(scores, singles, atol=1e-5)


def test_score_in_half_precision_close_to_fp32(spm):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    ref = spm.score(images, ["a", "b"], 100)
    half = copy.deepcopy(spm).to(torch.bfloat16)
    out = half.score(images, ["a", "b"], 100)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.1 * ref.abs().max().item() + 0.05)


@pytest.mark.parametrize(
    "images, prompts, t, message",
    [
        (torch.zeros(2, 3, 8, 8), ["a", ""], 0, "prompt 1 is empty"),
        (torch.zeros(2, 3, 8, 8), ["a", "  "], 0, "prompt 1 is empty"),
        (torch.zeros(2, 3, 8, 8), ["a"], 0, "one prompt per image"),
        (torch.zeros(3, 8, 8), ["a"], 0, "Tensor[B, 3, H, W]"),
        (torch.zeros(1, 1, 8, 8), ["a"], 0, "Tensor[B, 3, H, W]"),
        (torch.full((1, 3, 8, 8), float("nan")), ["a"], 0, "NaN or infinite"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ["a"], 0, "floating point"),
        (torch.zeros(1, 3, 8, 8), ["a"], 1000, "timesteps must be in [0, 1000)"),
        (torch.zeros(1, 3, 8, 8), ["a"], -1, "timesteps must be in [0, 1000)"),
        (torch.zeros(2, 3, 8, 8), ["a", "b"], [1, 2, 3], "one timestep per image"),
        (torch.zeros(1, 3, 8, 8), ["a"], 0.5, "integers"),
    ],
)
def test_bad_input_gives_one_clear_line(spm, images, prompts, t, message):
    with pytest.raises(ValueError, match=r"^SPM score: .*") as err:
        spm.score(images, prompts, t)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_tokenizer_is_one_line(base):
    spm = StepAwarePreferenceModel(clip=copy.deepcopy(base), tokenizer="/nonexistent/tokenizer-dir")
    with pytest.raises(ValueError, match="cannot load the SPM's CLIP tokenizer") as err:
        spm.score(torch.zeros(1, 3, 32, 32), ["a"], 0)
    assert "\n" not in str(err.value)


def test_preprocess_config_round_trip():
    for method in ("spo", "clip"):
        c = PreprocessConfig(image_size=64, method=method)
        assert PreprocessConfig.from_dict(c.to_dict()) == c
    # a checkpoint written before the method was recorded was trained with CLIPImageProcessor's recipe
    legacy = {k: v for k, v in PreprocessConfig(image_size=64).to_dict().items() if k != "method"}
    assert PreprocessConfig.from_dict(legacy).method == "clip"


def test_decoder_overshoot_is_scored_not_refused(spm):
    """x̂0 decoded past ±1 reaches the scorer as it is; the spo recipe clamps after the resize."""
    images = torch.rand(2, 3, 40, 48) * 3 - 1.5
    spo = spm.score(images, ["a", "b"], 10)
    clamped_first = spm.score(images.clamp(-1, 1), ["a", "b"], 10)
    assert torch.isfinite(spo).all() and not torch.allclose(spo, clamped_first)
