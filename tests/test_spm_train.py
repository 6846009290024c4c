"""SPM training: the objective, clipping, same-noise pairs, score_latents, the loop, resume, CLIs."""
from __future__ import annotations

import json
import math

import pytest
import torch

from spm_fixtures import colour_pairs, save_clip_dir, save_spm_test_pipeline
from trainer.spm import SPMError, load_spm, score_latents
from trainer.spm.data import write_pickapic_dir
from trainer.spm.denoise import add_noise, noised_pair_images
from trainer.spm.objective import pair_correct, preference_loss
from trainer.spm.train import PRESETS, clip_gradients, latest_checkpoint, make_config, train_spm, warmup_factor


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny SD-layout pipeline (8×8 images), a tiny CLIP dir, train and held-out colour-rule pairs."""
    root = tmp_path_factory.mktemp("spmworld")
    pipe = save_spm_test_pipeline(root / "pipe", size=8)
    clip = save_clip_dir(root / "clip", image_size=16)
    write_pickapic_dir(colour_pairs(96, seed=1), root / "train")
    write_pickapic_dir(colour_pairs(32, seed=2, tie_fraction=0.0), root / "heldout")
    return root, pipe, clip


@pytest.fixture(scope="module")
def model(world):
    from trainer.models import load_model

    return load_model(world[1])


# -- objective ---------------------------------------------------------------------------------------
def test_preference_loss_values():
    s0, s1 = torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([0.0, 0.0, 1.0, 1.0])
    l0, l1 = torch.tensor([1.0, 0.5, 0.5, 0.0]), torch.tensor([0.0, 0.5, 0.5, 1.0])
    loss = preference_loss(s0, s1, l0, l1)
    p0 = 1 / (1 + math.exp(-2.0))
    assert loss[0].item() == pytest.approx(-math.log(p0), rel=1e-6)  # plain CE for a decided pair
    assert loss[1].item() == pytest.approx(0.0, abs=1e-7)  # a perfectly predicted tie costs nothing
    assert loss[2].item() == pytest.approx(0.0, abs=1e-7)
    assert loss[3].item() == pytest.approx(-math.log(1 - 1 / (1 + math.exp(-2.0))), rel=1e-6)
    # a tie predicted 0.88/0.12 costs KL(½,½ ‖ p) > 0
    tie = preference_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([0.5]), torch.tensor([0.5]))
    expected = 0.5 * math.log(0.5 / p0) + 0.5 * math.log(0.5 / (1 - p0))
    assert tie.item() == pytest.approx(expected, rel=1e-6)


def test_pair_correct_skips_ties():
    out = pair_correct(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 2.0, 1.0]),
                       torch.tensor([1.0, 1.0, 0.5]), torch.tensor([0.0, 0.0, 0.5]))
    assert out[:2].tolist() == [1.0, 0.0] and math.isnan(out[2])


def test_warmup_and_clipping():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    before = clip_gradients((p for p in params), max_norm=1.0)  # a generator, as model.parameters() is
    assert before == pytest.approx(5.0)
    after = torch.cat([p.grad for p in params]).norm()
    assert after.item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(params[0].grad, torch.tensor([0.6, 0.0, 0.0]), atol=1e-6)


def test_presets_hold_the_reference_hyper_parameters():
    sd15, sdxl = make_config("sd15"), make_config("sdxl")
    assert (sd15.lr, sd15.weight_decay, sd15.warmup_steps, sd15.max_steps, sd15.batch_size, sd15.max_grad_norm) == (3e-6, 0.3, 500, 8000, 16, 1.0)
    assert (sdxl.lr, sdxl.max_steps) == (1e-6, 7000)
    assert set(PRESETS) == {"sd15", "sdxl", "shapes"}
    assert make_config("sd15", lr=1e-5).lr == 1e-5
    with pytest.raises(SPMError, match="unknown SPM training setting 'lrr'"):
        make_config("sd15", lrr=1)
    with pytest.raises(SPMError, match="--preset must be one of"):
        make_config("sd21")


# -- noised pairs and score_latents -------------------------------------------------------------------
def test_add_noise_matches_diffusers(model):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_pretrained(str(model.source), subfolder="scheduler")
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(add_noise(model.schedule, x0, eps, t), sched.add_noise(x0, eps, t), atol=1e-5)


def test_noised_pair_images_share_the_noise(model):
    """Identical images in a pair stay identical at every t (same noise; only the VAE posterior sample,
    std ~1e-4 here, differs); clean t keeps the image."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 8, 8) * 1.2 - 0.6
    other = torch.rand(2, 3, 8, 8) * 1.2 - 0.6
    prompts = ["a red picture", "a blue picture"]
    for t in (0, 500, 950):
        ts = torch.full((2,), t)
        a, b = noised_pair_images(model, img, img, prompts, ts, 5.0, g)
        assert (a - b).abs().max() < 2e-3
        a, c = noised_pair_images(model, img, other, prompts, ts, 5.0, g)
        assert (a - c).abs().max() > 0.05
    a, _ = noised_pair_images(model, img, other, prompts, torch.zeros(2, dtype=torch.long), 5.0, g)
    # the test VAE reproduces images up to a per-image gain; the colour pattern survives at t = 0
    for i in range(2):
        assert torch.corrcoef(torch.stack([a[i].flatten(), img[i].flatten()]))[0, 1] > 0.95


def test_score_latents_is_decode_then_score(model, world):
    from trainer.schedule import pred_x0_and_eps

    spm = load_spm(world[2])
    x_t, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([300, 900])
    prompts = ["a red picture", "a blue picture"]
    x0, _ = pred_x0_and_eps(out, x_t, model.schedule.alpha(t), "epsilon")
    expected = spm.score(model.decode(x0), prompts, t)
    assert torch.allclose(score_latents(spm, model, x_t, out, t, prompts), expected, atol=1e-6)
    clean = score_latents(spm, model, x_t, None, 0, prompts)
    assert torch.allclose(clean, spm.score(model.decode(x_t), prompts, 0), atol=1e-6)
    spm.family = "sdxl"
    with pytest.raises(SPMError, match="trained for sdxl but the model is shapes"):
        score_latents(spm, model, x_t, out, t, prompts)


# -- the loop -----------------------------------------------------------------------------------------
def test_training_beats_the_untrained_model_at_every_timestep(world, tmp_path):
    root, pipe, clip = world
    cfg = make_config(
        "shapes", base_model=str(pipe), init=str(clip), data=str(root / "train"), eval_data=str(root / "heldout"),
        out=str(tmp_path / "run"), max_steps=40, batch_size=8, warmup_steps=5, save_every=0, log_every=10,
        eval_batch_size=32, progress=False,
    )
    report = train_spm(cfg)
    before, after = report["before"]["buckets"], report["after"]["buckets"]
    for t in cfg.eval_timesteps:
        assert after[t]["pairs"] == 32
        assert after[t]["accuracy"] >= 0.8, (t, before[t], after[t])
        assert after[t]["accuracy"] >= before[t]["accuracy"] + 0.25, (t, before[t], after[t])
    # what was saved is what was evaluated: the saved SPM reproduces the report through the eval CLI
    saved = tmp_path / "run" / "spm"
    assert load_spm(saved).family == "shapes" and load_spm(saved).training_record["after"] == json.loads(json.dumps(report["after"]))
    from trainer.spm.cli import main

    out_json = tmp_path / "eval.json"
    assert main(["eval", "--spm", str(saved), "--base-model", str(pipe), "--data", str(root / "heldout"),
                 "--batch-size", "32", "--out", str(out_json)]) == 0
    cli_report = json.loads(out_json.read_text())
    for t in cfg.eval_timesteps:
        assert cli_report["buckets"][str(t)]["accuracy"] == pytest.approx(after[t]["accuracy"])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40] and log[-1]["loss"] < log[0]["loss"]


def test_resume_continues_exactly(world, tmp_path):
    """5 steps with a checkpoint at 4, then --resume to 6 == 6 steps straight. 96 pairs in batches of
    32 make 3 batches an epoch, so the checkpoint sits inside the second epoch's shuffle."""
    root, pipe, clip = world
    common = dict(base_model=str(pipe), init=str(clip), data=str(root / "train"), holdout=0, batch_size=32,
                  warmup_steps=2, log_every=1, progress=False)
    train_spm(make_config("shapes", out=str(tmp_path / "straight"), max_steps=6, save_every=0, **common))
    train_spm(make_config("shapes", out=str(tmp_path / "split"), max_steps=5, save_every=4, **common))
    ckpt = latest_checkpoint(tmp_path / "split")
    assert ckpt is not None and ckpt.name == "step-0000004"
    assert not [p for p in (tmp_path / "split" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    train_spm(make_config("shapes", out=str(tmp_path / "split"), max_steps=6, save_every=0, resume=True, **common))
    a = load_spm(tmp_path / "straight" / "spm").state_dict()
    b = load_spm(tmp_path / "split" / "spm").state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # the resumed run went on from step 4 (not from scratch), and training did change the weights
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 5, 6]
    straight = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] == pytest.approx(straight[-1]["loss"], rel=1e-5)
    init = load_spm(clip).state_dict()["model.visual_projection.weight"]
    assert not torch.allclose(a["model.visual_projection.weight"], init, atol=1e-4)


def test_train_cli_errors_are_one_line(world, capsys, tmp_path):
    from trainer.spm.cli import main

    root, pipe, clip = world
    assert main(["train", "--preset", "shapes", "--data", str(root / "train"), "--base-model", str(pipe)]) == 2
    assert capsys.readouterr().err.strip() == "error: --init is required: a CLIP model dir (e.g. PickScore), an SPM dir or a released SPM file"
    assert main(["train", "--init", str(clip), "--data", str(tmp_path / "nodata"), "--base-model", str(pipe),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nodata" in err and "metadata.jsonl" in err and err.count("\n") == 1  # before any model loading


def test_clean_training_without_noise(world, tmp_path):
    """--noise false: a PickScore-style step-agnostic model on clean images, no base model needed."""
    root, _, clip = world
    cfg = make_config("shapes", init=str(clip), data=str(root / "train"), eval_data=str(root / "heldout"), noise=False,
                      step_aware=False, out=str(tmp_path / "clean"), max_steps=30, batch_size=8, warmup_steps=3,
                      save_every=0, progress=False)
    report = train_spm(cfg)
    assert list(report["after"]["buckets"]) == [0]
    assert report["after"]["buckets"][0]["accuracy"] >= report["before"]["buckets"][0]["accuracy"] + 0.25
    assert not load_spm(tmp_path / "clean" / "spm").step_aware


def test_cli_flags_override_the_preset():
    from trainer.spm.cli import parse_train

    cfg = parse_train(["--preset", "sdxl", "--lr", "2e-6", "--resume", "--noise", "false",
                       "--eval-timesteps", "0,500", "--data", "d", "--init", "i"])
    assert (cfg.lr, cfg.resume, cfg.noise, cfg.eval_timesteps) == (2e-6, True, False, (0, 500))
    assert (cfg.max_steps, cfg.family, cfg.weight_decay) == (7000, "sdxl", 0.3)  # untouched preset values
    assert parse_train([]).lr == 3e-6
