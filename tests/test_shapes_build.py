"""The ShapesWorld build's training functions on tiny inputs (the full build is not part of CI)."""
import torch

from trainer.shapes.architectures import clip_config
from trainer.shapes.dataset import render_set
from trainer.shapes.train_clip import pretrain_clip
from trainer.shapes.train_unet import train_unet
from trainer.shapes.world import parse_caption, train_captions


def test_unet_training_fine_tunes_the_text_tower_and_resumes(tmp_path):
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    text = CLIPTextModel(clip_config().text_config)
    before = {k: v.clone() for k, v in text.state_dict().items()}
    latents = torch.randn(6, 4, 16, 16)
    tokens = torch.randint(0, text.config.vocab_size, (3, 16))
    args = (latents, torch.full_like(latents, 0.1), torch.tensor([0, 1, 2, 0, 1, 2]), tokens)
    ckpt = tmp_path / "unet.pt"
    unet, text = train_unet(*args, text, tokens[0], 0.5, steps=3, seed=0, checkpoint=ckpt, batch=4, text_lr=2e-4,
                            log=lambda m: None)
    moved = [k for k, v in text.state_dict().items() if not torch.equal(v, before[k])]
    assert any("token_embedding" in k for k in moved)
    assert not any(p.requires_grad for p in text.parameters()) and not unet.training
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 3 and set(state) >= {"unet", "text_encoder", "opt", "generator"}
    # A finished checkpoint resumes to the same weights without training further.
    again, _ = train_unet(*args, CLIPTextModel(clip_config().text_config), tokens[0], 0.5, steps=3, seed=0,
                          checkpoint=ckpt, batch=4, text_lr=2e-4, log=lambda m: None)
    for (k, a), b in zip(unet.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_frozen_text_tower_stays_as_it_is_and_runs_once():
    """text_lr = 0 (the build's choice): the tower's states are computed once, not in every step."""
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    text = CLIPTextModel(clip_config().text_config)
    before = {k: v.clone() for k, v in text.state_dict().items()}
    calls = []
    text.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    latents = torch.randn(6, 4, 16, 16)
    tokens = torch.randint(0, text.config.vocab_size, (3, 16))
    args = (latents, torch.full_like(latents, 0.1), torch.tensor([0, 1, 2, 0, 1, 2]), tokens)
    unet, text = train_unet(*args, text, tokens[0], 0.5, steps=3, seed=0, batch=4, log=lambda m: None)
    assert calls == [3, 1]  # the three captions, then the empty caption
    assert all(torch.equal(v, before[k]) for k, v in text.state_dict().items())
    assert not any(p.requires_grad for p in text.parameters()) and not unet.training


def test_clip_batches_share_colours_so_shape_and_position_matter(monkeypatch, tmp_path):
    """Every contrastive batch is `groups` colour/background pairs: negatives differ in shape/position."""
    from transformers import CLIPModel, CLIPTokenizer

    from trainer.shapes.tokenizer import write_tokenizer

    seen = []
    real_forward = CLIPModel.forward

    def spy(self, input_ids=None, pixel_values=None, **kw):
        seen.append(input_ids.clone())
        return real_forward(self, input_ids=input_ids, pixel_values=pixel_values, **kw)

    monkeypatch.setattr(CLIPModel, "forward", spy)
    write_tokenizer(tmp_path, max_length=16)
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    data = render_set(train_captions(), 1, seed=0)
    pretrain_clip(data, tok, steps=2, seed=0, batch=16, groups=2, log=lambda m: None)
    ids = tok(data.captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    id_to_caption = {tuple(t.tolist()): c for c, t in zip(data.captions, ids)}
    for ids in seen:
        scenes = [parse_caption(id_to_caption[tuple(t.tolist())]) for t in ids]
        assert len({(s.colour, s.background) for s in scenes}) == 2
        assert len({s.caption for s in scenes}) == 16  # distinct captions: no colliding positives


def test_build_size_flags_reach_the_config_and_reject_nonsense(monkeypatch, tmp_path, capsys):
    import pytest

    from trainer.shapes import build

    seen = {}
    monkeypatch.setattr(build, "stage_world", lambda cfg, out, scratch: seen.update(cfg=cfg) or {})
    build.main(["--stage", "world", "--quick", "--unet-steps", "7", "--unet-phase2-steps", "3", "--scratch", str(tmp_path)])
    assert seen["cfg"].unet_steps == 7 and seen["cfg"].clip_steps == build.QUICK.clip_steps
    assert seen["cfg"].unet_phase2_steps == 3 and build.FULL.unet_phase2_steps == 2000  # as the shipped weights
    build.main(["--stage", "world", "--preference-sample-pairs", "9", "--preference-steps", "11", "--scratch", str(tmp_path),
                "--out", str(tmp_path / "weights")])
    assert (seen["cfg"].preference_sample_pairs, seen["cfg"].preference_steps) == (9, 11)
    assert seen["cfg"].unet_steps == build.FULL.unet_steps and build.FULL.preference_sample_pairs == 0
    with pytest.raises(SystemExit):
        build.main(["--stage", "world", "--unet-steps", "0", "--scratch", str(tmp_path)])
    assert "--unet-steps must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.main(["--stage", "world", "--unet-phase2-steps", "-1", "--scratch", str(tmp_path)])
    assert "--unet-phase2-steps must be at least 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.main(["--stage", "world", "--preference-sample-pairs", "-2", "--scratch", str(tmp_path)])
    assert "--preference-sample-pairs must be at least 0, got -2" in capsys.readouterr().err


def test_unet_second_phase_continues_the_model_draws_by_weight_and_keeps_a_frozen_text_tower(monkeypatch):
    from transformers import CLIPTextModel

    from trainer.shapes import train_unet as module

    torch.manual_seed(0)
    text = CLIPTextModel(clip_config().text_config)
    latents = torch.randn(6, 4, 16, 16)
    tokens = torch.randint(0, text.config.vocab_size, (3, 16))
    args = (latents, torch.full_like(latents, 0.1), torch.tensor([0, 1, 2, 0, 1, 2]), tokens)
    first, text = train_unet(*args, text, tokens[0], 0.5, steps=2, seed=0, batch=4, log=lambda m: None)
    start = {k: v.clone() for k, v in first.state_dict().items()}
    text_before = {k: v.clone() for k, v in text.state_dict().items()}
    drawn = []
    real = torch.multinomial
    monkeypatch.setattr(module.torch, "multinomial", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    weight = torch.tensor([0.0, 1.0, 0.0, 0.0, 3.0, 0.0])
    second, text = train_unet(*args, text, tokens[0], 0.5, steps=3, seed=1, batch=8, text_lr=0.0, init_unet=first,
                              sample_weight=weight, log=lambda m: None)
    assert second is first  # continued, not re-initialised
    assert any(not torch.equal(v, start[k]) for k, v in second.state_dict().items())
    assert all(torch.equal(v, text_before[k]) for k, v in text.state_dict().items())
    assert len(drawn) == 3 and set(torch.cat(drawn).tolist()) <= {1, 4}  # only images with weight > 0


def test_evaluate_stage_replaces_the_numbers_and_keeps_how_the_pipeline_was_trained(monkeypatch, tmp_path):
    import json

    from trainer.shapes import build

    (tmp_path / "record.json").write_text(json.dumps({
        "pipeline": {"command": "python -m trainer.shapes.build --stage pipeline", "steps": {"unet": 5},
                     "heldout_eval": {"aesthetic": 1.0}},
        "world": {"command": "w"}}))
    monkeypatch.setattr(build, "stage_evaluate", lambda cfg, out, scratch: {"heldout_eval": {"aesthetic": 2.0}})
    build.main(["--stage", "evaluate", "--out", str(tmp_path), "--scratch", str(tmp_path / "s")])
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["world"] == {"command": "w"} and "evaluate" not in record
    assert record["pipeline"] == {"command": "python -m trainer.shapes.build --stage pipeline", "steps": {"unet": 5},
                                  "heldout_eval": {"aesthetic": 2.0},
                                  "evaluated_by": "python -m trainer.shapes.build --stage evaluate --out <weights> "
                                                  "--scratch <scratch>"}


def test_a_stage_records_the_software_its_bits_depend_on(monkeypatch, tmp_path):
    import json

    import diffusers

    from trainer.shapes import build

    monkeypatch.setattr(build, "stage_world", lambda cfg, out, scratch: {"samples": 1})
    threads = torch.get_num_threads()
    try:
        build.main(["--stage", "world", "--threads", "1", "--out", str(tmp_path), "--scratch", str(tmp_path / "s")])
    finally:
        torch.set_num_threads(threads)  # main sets them for the whole process
    entry = json.loads((tmp_path / "record.json").read_text())["world"]
    assert entry["samples"] == 1
    assert entry["software"]["torch"] == torch.__version__ and entry["software"]["diffusers"] == diffusers.__version__
    assert entry["software"]["threads"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
