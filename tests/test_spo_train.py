"""SPO training: two forwards per transition, reference = adapter off, clipping, resume, CLI errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spo_fixtures import Brightness, CountingUNet, tiny_dir
from trainer.models import load_model
from trainer.spo.config import build_config
from trainer.spo.rollout import spo_round
from trainer.spo.step import adapter_disabled, transition_loss
from trainer.spo.train import (
    add_lora, cast_frozen, epoch_batches, even_split, frozen_dtype, sample_epoch, shared_generator, train, train_on,
    upcast_trainable,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny_dir(root, False)
    tiny_dir(root, True)
    return root


def tiny_cfg(out, **over):
    base = {
        "output_dir": str(out),
        "sampling.batch_size": 2,
        "sampling.k": 3,
        "sampling.rounds_per_epoch": 1,
        "sampling.branch_start": 14,
        "sampling.threshold": 0.0,
        "train.batch_size": 4,
        "train.epochs": 2,
        "train.lr": 1e-3,
        "lora.rank": 2,
        "lora.alpha": 1.0,
    }
    base.update(over)
    return build_config("shapes", overrides=base)


@pytest.mark.parametrize("sdxl", [False, True])
def test_two_guided_forwards_per_batch_and_ref_is_base(models_dir, sdxl):
    model = load_model(tiny_dir(models_dir, sdxl), family="sdxl" if sdxl else "sd15")
    cfg = tiny_cfg("unused", **({"sampling.inner_steps": 2, "sampling.k": 2} if sdxl else {}))
    r = spo_round(model, Brightness(), ["a", "b"], cfg.sampling, torch.Generator().manual_seed(0))
    x = torch.randn(2, *model.latent_shape)
    emb, unc = model.encode_prompts(["a", "b"]), model.uncond_embeds(2)
    base_out = model.guided_output(x, torch.tensor([500, 500]), emb, unc, 5.0)

    add_lora(model, cfg.lora)
    random_lora_b(model)
    with torch.no_grad():
        lora_out = model.guided_output(x, torch.tensor([500, 500]), emb, unc, 5.0)
        with adapter_disabled(model.unet):
            ref_out = model.guided_output(x, torch.tensor([500, 500]), emb, unc, 5.0)
    torch.testing.assert_close(ref_out, base_out, atol=0, rtol=0)
    assert (lora_out - base_out).abs().max() > 1e-3

    counter = CountingUNet(model.unet)
    batch = r.transitions.index(slice(0, 6))
    loss, _ = transition_loss(model, counter, batch, r.embeds, model.uncond_embeds(2), 20, 5.0, 1.0, 10.0, 0.1)
    model.unet = counter  # the reference forward goes through model.unet
    try:
        counter.calls.clear()
        loss, _ = transition_loss(model, counter, batch, r.embeds, model.uncond_embeds(2), 20, 5.0, 1.0, 10.0, 0.1)
    finally:
        model.unet = counter.inner
    assert len(calls := counter.calls) == 2
    unshared = int((~batch.shared).sum())
    assert calls == [2 * (6 + unshared)] * 2  # guided batch of the distinct x_t only
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.unet.parameters() if p.requires_grad)


def random_lora_b(model):
    """Make the adapter do something: peft starts B at 0, so a fresh LoRA changes no output."""
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


def grad_norms_at_step(models_dir, max_grad_norm):
    """train_on over one sampled epoch with --train.max_grad_norm `max_grad_norm` and a zero-lr optimizer:
    (its info, the LoRA gradient norm the optimizer saw at each step, i.e. after any clipping)."""
    from accelerate import Accelerator

    model = load_model(tiny_dir(models_dir, False), family="sd15")
    cfg = tiny_cfg("unused", **{"train.max_grad_norm": max_grad_norm, "train.batch_size": 2})
    params = add_lora(model, cfg.lora)
    random_lora_b(model)
    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW(params, lr=0.0)  # lr 0: every step sees the same weights
    unet, opt = acc.prepare(model.unet, opt)
    seen, real_step = [], opt.step

    def spy_step(*a, **k):
        seen.append(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item())
        return real_step(*a, **k)

    opt.step = spy_step
    data = sample_epoch(model, Brightness(), ["a", "b"], cfg, torch.Generator().manual_seed(0), False)
    return train_on(model, unet, acc, opt, params, data, cfg), seen


def test_gradient_clipping_really_clips(models_dir):
    info, seen = grad_norms_at_step(models_dir, 1e-4)
    assert info["grad_norm"] > 1e-3  # the unclipped norm was far above the bound...
    assert seen and max(seen) <= 1e-4 * 1.001  # ...and the optimizer saw the clipped gradient


def lora_tensors(out):
    from safetensors.torch import load_file

    ckpts = sorted((out / "checkpoints").glob("epoch-*"))
    return load_file(str(ckpts[-1] / "lora.safetensors"))


def test_resume_gives_identical_weights(models_dir, tmp_path):
    src = str(tiny_dir(models_dir, False))

    def run(out, epochs, resume=False):
        cfg = tiny_cfg(out, **{"train.epochs": epochs, "resume": resume, "model.source": src})
        return train(cfg, model=load_model(src, family="sd15"), scorer=Brightness(), prompts=["a", "b", "c"])

    straight = run(tmp_path / "straight", 2)
    run(tmp_path / "split", 1)
    resumed = run(tmp_path / "split", 2, resume=True)
    a, b = lora_tensors(tmp_path / "straight"), lora_tensors(tmp_path / "split")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert straight["summary"]["steps"] > 0 and resumed["summary"]["epoch"] == 1
    assert (tmp_path / "straight" / "straight.safetensors").is_file()
    assert (tmp_path / "straight" / "config.yaml").is_file()
    assert (tmp_path / "straight" / "diffusers").is_dir()


def cli(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "trainer.spo", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--sampling.kk", "3"], "did you mean --sampling.k"),
        (["--sampling.k", "1"], "--sampling.k must be at least 2"),
        (["--sampling.threshold", "1.5"], "--sampling.threshold"),
        (["--sampling.micro_batch", "7"], "--sampling.micro_batch"),
        (["--model.source", "no/such/dir/here"], "no/such/dir/here"),
        (["--preset", "sd3"], "--preset"),
        (["--train.lr", "fast"], "--train.lr"),
    ],
)
def test_cli_bad_input_one_line_exit_2(args, needle, tmp_path):
    r = cli(*args, "--output_dir", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_unknown_family_and_unwritable_dir(tmp_path):
    from safetensors.torch import save_file

    bogus = tmp_path / "model.safetensors"
    save_file({"something.weight": torch.zeros(2)}, str(bogus))
    r = cli("--model.source", str(bogus), "--output_dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown checkpoint family" in r.stderr and str(bogus) in r.stderr
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    keep = tmp_path / "locked" / "keep.txt"
    if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
        (tmp_path / "afile").write_text("x")
        target = tmp_path / "afile" / "out"
    else:
        target = locked / "out"
    r = cli("--output_dir", str(target))
    assert r.returncode == 2 and "--output_dir" in r.stderr


def test_help_lists_every_field():
    r = cli("--help")
    assert r.returncode == 0
    for key in ("--sampling.k ", "--sampling.inner_steps", "--train.beta", "--lora.targets", "--scorer.score_timestep"):
        assert key in r.stdout
    assert "--sampling.k " in cli("--preset", "sdxl", "--help").stdout


def test_yaml_config_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("sampling:\n  k: 6\n  threshold: 0.2\ntrain:\n  lr: 0.001\n")
    cfg = build_config("sdxl", str(cfg_file), {"sampling.k": "5"})
    assert cfg.sampling.k == 5 and cfg.sampling.threshold == 0.2 and cfg.train.lr == 0.001
    assert cfg.sampling.inner_steps == 3 and cfg.lora.rank == 64  # from the preset
    sd15 = build_config("sd15")
    assert (sd15.sampling.k, sd15.sampling.threshold, sd15.train.lr, sd15.lora.rank) == (4, 0.3, 6e-5, 4)


def test_accelerate_two_processes_hold_identical_lora(models_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\nc\nd\n")
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        # accelerate's --cpu flag starts ONE process unless MPI is set up; --multi_gpu starts torchrun,
        # and the trainer joins the ranks in a gloo group when there is no GPU.
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "trainer.spo",
        "--model.source", str(tiny_dir(models_dir, False)), "--model.family", "sd15",
        "--scorer.source", "shapes-aesthetic", "--prompts", str(prompts), "--output_dir", str(out),
        "--sampling.batch_size", "2", "--sampling.k", "3", "--sampling.rounds_per_epoch", "0",
        "--sampling.branch_start", "15", "--sampling.threshold", "0", "--train.batch_size", "2",
        "--train.epochs", "1", "--train.lr", "1e-2", "--lora.rank", "2", "--validate_every", "5",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    fp = json.loads((out / "ranks.json").read_text())["lora_fingerprints"]
    assert len(fp) == 2 and fp[0] == fp[1]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["steps"] > 0  # the ranks really trained (and all-reduced) together
    # 4 prompts, 2 per process: one sampling batch; everything both kept is gathered and split evenly
    assert log[-1]["batches"] == 1
    trained = log[-1]["trained_per_rank"]
    assert trained[0] == trained[1] == log[-1]["kept_all"] // 2 > 0


# -- the epoch as the reference runs it ----------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3])
def test_an_epoch_visits_every_prompt_once(world):
    s = build_config("sd15", overrides={"sampling.batch_size": 4}).sampling
    assert s.rounds_per_epoch == 0
    for epoch in range(2):
        shards = [epoch_batches(23, s, seed=5, epoch=epoch, rank=r, world=world) for r in range(world)]
        assert len({len(b) for b in shards}) == 1  # every process runs the same number of batches
        seen = [i for b in shards for batch in b for i in batch]
        assert sorted(seen) == list(range(23))
        assert all(len(batch) <= 4 for b in shards for batch in b)
    # shuffled, and differently in each epoch
    e0, e1 = (sum(epoch_batches(23, s, 5, e, 0, 1), []) for e in (0, 1))
    assert e0 != list(range(23)) and e0 != e1


def test_capped_epochs_draw_without_replacement():
    s = build_config("shapes", overrides={"sampling.batch_size": 4, "sampling.rounds_per_epoch": 2}).sampling
    seen = [i for e in range(3) for batch in epoch_batches(12, s, 0, e, 0, 1) for i in batch]
    assert len(seen) == 24 and sorted(seen[:12]) == list(range(12)) and sorted(seen[12:]) == list(range(12))


def test_even_split_is_a_shared_shuffle_cut_into_equal_parts():
    parts = [even_split(11, 3, r, shared_generator(0, 2, 0, 0)) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    flat = torch.cat(parts).tolist()
    assert len(set(flat)) == 9 and set(flat) <= set(range(11))


def test_sampling_uses_the_weights_trained_on_the_previous_batch(models_dir, tmp_path, monkeypatch):
    """On-policy interleaving: batch n+1 is sampled by the LoRA right after training on batch n."""
    import trainer.spo.train as tr

    src = str(tiny_dir(models_dir, False))
    model = load_model(src, family="sd15")
    at_sampling, after_training = [], []
    real_round, real_train = tr.spo_round, tr.train_batch

    def lora_now():
        return torch.cat([p.detach().flatten().clone() for n, p in model.unet.named_parameters() if "lora_" in n])

    def spy_round(*a, **k):
        at_sampling.append(lora_now())
        return real_round(*a, **k)

    def spy_train(*a, **k):
        real_train(*a, **k)
        after_training.append(lora_now())

    monkeypatch.setattr(tr, "spo_round", spy_round)
    monkeypatch.setattr(tr, "train_batch", spy_train)
    cfg = tiny_cfg(tmp_path / "o", **{"train.epochs": 1, "sampling.rounds_per_epoch": 0, "sampling.batch_size": 2,
                                      "train.batch_size": 2, "validate_every": 0, "checkpoint_every": 0})
    result = train(cfg, model=model, scorer=Brightness(), prompts=["a", "b", "c", "d", "e"])
    assert len(at_sampling) == 3 == result["summary"]["batches"]  # 2 + 2 + a partial batch of 1
    for n in range(2):
        assert torch.equal(at_sampling[n + 1], after_training[n])
        assert not torch.equal(at_sampling[n + 1], at_sampling[n])


def test_no_clipping_by_default_for_the_reference_presets(models_dir):
    assert build_config("sd15").train.max_grad_norm == 0 and build_config("sdxl").train.max_grad_norm == 0
    info, seen = grad_norms_at_step(models_dir, 0.0)
    assert info["grad_norm"] > 1e-3
    assert max(seen) == pytest.approx(info["grad_norm"], rel=1e-5)  # the optimizer saw the gradient untouched


def test_frozen_weights_in_half_precision_lora_in_fp32(models_dir):
    from trainer.spo.config import TrainConfig

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert frozen_dtype(TrainConfig(mixed_precision="fp16"), gpu) == torch.float16
    assert frozen_dtype(TrainConfig(mixed_precision="bf16"), gpu) == torch.bfloat16
    assert frozen_dtype(TrainConfig(mixed_precision="fp16"), cpu) == torch.float32  # CPU keeps fp32
    assert frozen_dtype(TrainConfig(mixed_precision="no", frozen_dtype="bf16"), cpu) == torch.bfloat16
    model = load_model(tiny_dir(models_dir, False), family="sd15")
    cast_frozen(model, torch.bfloat16)
    params = add_lora(model, tiny_cfg("unused").lora)
    upcast_trainable(params)
    lora = {n: p for n, p in model.unet.named_parameters() if "lora_" in n}
    frozen = [p for n, p in model.unet.named_parameters() if "lora_" not in n]
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in frozen)
    assert all(p.dtype == torch.bfloat16 for p in model.text_encoders[0].parameters())
    x = torch.randn(1, *model.latent_shape, dtype=torch.bfloat16)
    emb = model.encode_prompts(["a"])
    out = model.guided_output(x, torch.tensor([500]), emb, model.uncond_embeds(1), 5.0)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
