"""Nothing lost, nothing mixed up: every bad input and fault of issue 23, each built inside its test.

The tables run each entry point on a bad input and check the same contract: exit code 2, one line
on stderr naming the file or flag, no traceback, nothing trained or written. Faults that need a
run (a second run into a used folder, a damaged checkpoint, a full disk) have focused tests below.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spo_fixtures import Brightness, tiny_dir

REPO = Path(__file__).resolve().parents[1]


def one_line_exit_2(rc: int, err: str, needle: str, after_progress: bool = False) -> None:
    """after_progress: the failure came mid-training, after tqdm's progress bars (also on stderr)."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    if after_progress:
        lines = [line for line in lines if line.strip() and not ("%|" in line and "it" in line)]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in err, err
    assert "weights_only=False" not in err


# ====================================================================== trainer.spo: config and inputs
def _yaml(tmp, text: str | bytes) -> str:
    p = tmp / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def _file(tmp, name: str, data: bytes) -> str:
    p = tmp / name
    p.write_bytes(data)
    return str(p)


SPO_CASES = [
    # (id, argv builder (tmp -> argv), needle)
    ("malformed-yaml", lambda t: ["--config", _yaml(t, "sampling: [k: 4\n")], "not valid YAML"),
    ("binary-yaml", lambda t: ["--config", _yaml(t, b"\x00\x01\x02PK\x03\x04")], "binary file"),
    ("non-utf8-yaml", lambda t: ["--config", _yaml(t, b"sampling:\n  k: \xff\xfe\n")], "not a UTF-8"),
    ("yaml-list-for-mapping", lambda t: ["--config", _yaml(t, "- 1\n- 2\n")], "expected a mapping"),
    ("yaml-float-epochs", lambda t: ["--config", _yaml(t, "train:\n  epochs: 2.5\n")], "--train.epochs: expected an integer"),
    ("yaml-list-k", lambda t: ["--config", _yaml(t, "sampling:\n  k: [4, 5]\n")], "--sampling.k: expected one integer"),
    ("yaml-null-lr", lambda t: ["--config", _yaml(t, "train:\n  lr: null\n")], "--train.lr: expected a number, got null"),
    ("yaml-bool-k", lambda t: ["--config", _yaml(t, "sampling:\n  k: true\n")], "--sampling.k"),
    ("yaml-unknown-key", lambda t: ["--config", _yaml(t, "sampling:\n  kk: 3\n")], "did you mean --sampling.k"),
    ("yaml-preset-contradicts", lambda t: ["--preset", "shapes", "--config", _yaml(t, "preset: sd15\n")], "preset: sd15"),
    ("yaml-preset-unknown", lambda t: ["--config", _yaml(t, "preset: sd3\n")], "unknown preset 'sd3'"),
    ("lr-zero", lambda t: ["--train.lr", "0"], "--train.lr must be a number > 0"),
    ("lr-negative", lambda t: ["--train.lr", "-1e-4"], "--train.lr must be a number > 0"),
    ("lr-nan", lambda t: ["--train.lr", "nan"], "--train.lr: must be a finite number"),
    ("lr-text", lambda t: ["--train.lr", "fast"], "--train.lr: expected a number"),
    ("epochs-zero", lambda t: ["--train.epochs", "0"], "--train.epochs must be >= 1"),
    ("epochs-float", lambda t: ["--train.epochs", "2.5"], "--train.epochs: expected an integer"),
    ("rounds-negative", lambda t: ["--sampling.rounds_per_epoch", "-1"], "--sampling.rounds_per_epoch must be >= 0"),
    ("alpha-zero", lambda t: ["--lora.alpha", "0"], "--lora.alpha must be a number > 0"),
    ("beta-zero", lambda t: ["--train.beta", "0"], "--train.beta must be a number > 0"),
    ("lora-init-unknown", lambda t: ["--lora.init", "xavier"], "--lora.init must be one of gaussian, default"),
    ("empty-output-dir", lambda t: ["--output_dir", ""], "--output_dir is empty"),
    ("resume-and-overwrite", lambda t: ["--resume", "--overwrite"], "--resume and --overwrite"),
    ("binary-prompts", lambda t: ["--prompts", _file(t, "p.txt", b"a cat\x00\x01\x02")], "is a binary file"),
    ("non-utf8-prompts", lambda t: ["--prompts", _file(t, "p.txt", b"a cat\nun caf\xe9\n")], "is not UTF-8 text (line 2)"),
    ("empty-prompts", lambda t: ["--prompts", _file(t, "p.txt", b"\n \n")], "holds no prompts"),
    ("folder-holds-a-run", lambda t: ["--output_dir", _used(t)], "already holds a run (checkpoints/, log.jsonl)"),
    ("export-target-in-the-way", lambda t: ["--output_dir", _in_the_way(t)], "is in the way of the export"),
    ("resume-without-checkpoint", lambda t: ["--resume", "--output_dir", str(t / "fresh")], "--resume: no checkpoint"),
    ("pickle-scorer", lambda t: ["--scorer.source", _pickle(t / "evil.bin")], "never unpickled"),
    ("zero-byte-spm", lambda t: ["--scorer.source", _file(t, "sd-v1-5_spm.bin", b"")], "empty file (0 bytes)"),
    ("spm-dir-without-clip", lambda t: ["--scorer.source", _spm_dir_without_clip(t)], "no 'clip' section"),
]


def _used(tmp: Path) -> str:
    out = tmp / "used"
    (out / "checkpoints" / "epoch-0001").mkdir(parents=True)
    (out / "log.jsonl").write_text('{"epoch": 0}\n')
    return str(out)


def _in_the_way(tmp: Path) -> str:
    (tmp / "run" / "run.safetensors").mkdir(parents=True)
    return str(tmp / "run")


def _pickle(path: Path) -> str:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    torch.save({"model.x": Payload()}, path)
    return str(path)


def _spm_dir_without_clip(tmp: Path) -> str:
    d = tmp / "spm"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"format": "spo-studio-spm", "format_version": 1, "step_aware": True}))
    return str(d)


@pytest.mark.parametrize("case,build,needle", SPO_CASES, ids=[c[0] for c in SPO_CASES])
def test_spo_bad_input_is_one_line_and_exit_2_before_training(case, build, needle, tmp_path, capsys, monkeypatch):
    from trainer.spo import __main__ as cli
    from trainer.spo import train as train_module

    monkeypatch.setattr(train_module, "train_on", _must_not_train)
    out = tmp_path / "out"
    argv = build(tmp_path)
    if "--output_dir" not in argv:
        argv += ["--output_dir", str(out)]
    rc = cli.main(argv)
    one_line_exit_2(rc, capsys.readouterr().err, needle)
    assert not (out / "checkpoints").exists() and not (out / "log.jsonl").exists()
    if case == "folder-holds-a-run":
        assert (tmp_path / "used" / "log.jsonl").read_text() == '{"epoch": 0}\n'  # untouched


def _must_not_train(*a, **k):
    raise AssertionError("training started on a bad input")


def test_yaml_preset_is_honoured_not_ignored(tmp_path):
    from trainer.spo.config import build_config

    cfg = build_config(None, _yaml(tmp_path, "preset: sd15\nsampling:\n  k: 6\n"))
    assert (cfg.preset, cfg.lora.rank, cfg.train.lr, cfg.sampling.k) == ("sd15", 4, 6e-5, 6)
    assert build_config(None, _yaml(tmp_path, "preset: sdxl\n")).lora.rank == 64
    assert build_config("sdxl", _yaml(tmp_path, "preset: sdxl\n")).lora.rank == 64  # agreeing: fine


def test_cli_written_config_yaml_reads_back(tmp_path):
    """The config.yaml a run exports is a valid --config (preset and all), giving the same config."""
    import yaml

    from trainer.spo.config import build_config, to_dict

    cfg = build_config("sd15", overrides={"sampling.k": 5, "lora.targets": "to_q,to_v"})
    again = build_config(None, _yaml(tmp_path, yaml.safe_dump(to_dict(cfg))))
    assert to_dict(again) == to_dict(cfg)


# ====================================================================== the output folder
def tiny_cfg(out, **over):
    from trainer.spo.config import build_config

    base = {"output_dir": str(out), "sampling.batch_size": 2, "sampling.k": 3, "sampling.rounds_per_epoch": 1,
            "sampling.branch_start": 14, "sampling.threshold": 0.0, "train.batch_size": 4, "train.epochs": 2,
            "train.lr": 1e-3, "lora.rank": 2, "lora.alpha": 1.0}
    base.update(over)
    return build_config("shapes", overrides=base)


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory):
    return tiny_dir(tmp_path_factory.mktemp("models"), False)


def run(sd15_dir, out, **over):
    from trainer.models import load_model
    from trainer.spo.train import train

    cfg = tiny_cfg(out, **{"model.source": str(sd15_dir), **over})
    return train(cfg, model=load_model(str(sd15_dir), family="sd15"), scorer=Brightness(), prompts=["a", "b", "c"])


def newest_lora(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(sorted((out / "checkpoints").glob("epoch-*"))[-1] / "lora.safetensors"))


def log_epochs(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]


def no_temporaries(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


def test_a_second_run_into_a_used_folder_is_refused_resume_continues_overwrite_starts_over(sd15_dir, tmp_path):
    from trainer.spo.config import ConfigError

    out = tmp_path / "run"
    run(sd15_dir, out, **{"train.epochs": 1})
    first = newest_lora(out)
    with pytest.raises(ConfigError, match=r"already holds a run .*add --resume to continue it, --overwrite"):
        run(sd15_dir, out, **{"train.epochs": 2, "seed": 5})
    assert all(torch.equal(a, b) for a, b in zip(newest_lora(out).values(), first.values()))  # not pruned or replaced
    assert log_epochs(out) == [0]  # the refused run wrote nothing
    run(sd15_dir, out, **{"train.epochs": 1, "seed": 5, "overwrite": True})
    assert log_epochs(out) == [0] and [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0000"]
    assert any(not torch.equal(a, b) for a, b in zip(first.values(), newest_lora(out).values()))  # a new run, seed 5


def test_resume_refuses_a_changed_model_setting_naming_it_and_allows_more_epochs(sd15_dir, tmp_path):
    from trainer.spo.config import ConfigError

    out = tmp_path / "run"
    run(sd15_dir, out, **{"train.epochs": 1})
    for key, value in (("lora.rank", 4), ("lora.targets", "to_q"), ("model.family", "sdxl"), ("lora.alpha", 2.0)):
        with pytest.raises(ConfigError, match=rf"--resume: --{key.replace('.', '[.]')} is .* checkpoint was trained with"):
            run(sd15_dir, out, **{"train.epochs": 2, "resume": True, key: value})
    result = run(sd15_dir, out, **{"train.epochs": 2, "resume": True, "checkpoint_every": 1})
    assert result["summary"]["epoch"] == 1 and log_epochs(out) == [0, 1]


def test_damaged_newest_checkpoint_falls_back_says_so_and_matches_the_uninterrupted_run(sd15_dir, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(sd15_dir, straight, **{"train.epochs": 3})
    run(sd15_dir, split, **{"train.epochs": 2})
    lora = split / "checkpoints" / "epoch-0001" / "lora.safetensors"
    lora.write_bytes(lora.read_bytes()[: lora.stat().st_size // 2])  # truncated, as by a full disk or a bad copy
    # what a kill leaves: temporary checkpoint folders, a half-written log line
    (split / "checkpoints" / ".tmp-epoch-0002-4242").mkdir()
    (split / "checkpoints" / ".epoch-0002.4242.tmp").mkdir()
    with open(split / "log.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')
    capsys.readouterr()
    run(sd15_dir, split, **{"train.epochs": 3, "resume": True})
    said = capsys.readouterr().out
    assert "checkpoint epoch-0001 is damaged" in said and "resuming from epoch-0000 instead of the damaged epoch-0001" in said
    assert log_epochs(split) == [0, 1, 2]  # each epoch once, epoch 1 from the rerun
    assert no_temporaries(split) == []
    a, b = newest_lora(straight), newest_lora(split)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_every_checkpoint_damaged_is_one_line(sd15_dir, tmp_path):
    from trainer.spo.config import ConfigError

    out = tmp_path / "run"
    run(sd15_dir, out, **{"train.epochs": 1})
    (out / "checkpoints" / "epoch-0000" / "optimizer.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ConfigError, match="every checkpoint .* is damaged \\(epoch-0000\\); use --overwrite"):
        run(sd15_dir, out, **{"train.epochs": 2, "resume": True})


def test_a_second_run_at_once_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    from trainer.spo.config import ConfigError
    from trainer.spo.rundir import prepare_output_dir

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from trainer.spo.rundir import RunLock; from pathlib import Path;"
         "lock = RunLock(Path(sys.argv[2])); print('locked', flush=True); time.sleep(120)", str(REPO), str(out)],
        stdout=subprocess.PIPE, text=True)
    out.mkdir()
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"another run \(pid {holder.pid}\) is writing there"):
            prepare_output_dir(tiny_cfg(out))
    finally:
        holder.kill()  # kill -9: no clean-up of its own
        holder.wait()
    assert (out / ".spo.lock").exists()  # the file stays; the kernel dropped the lock with the process
    lock = prepare_output_dir(tiny_cfg(out))
    lock.release()


# ====================================================================== full disk
def _enospc(path=None):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path else None)


def test_disk_full_during_training_is_one_line_and_leaves_no_temporary(sd15_dir, tmp_path, capsys, monkeypatch):
    """The real CLI on a tiny model; the checkpoint writer runs out of space half-way through a file."""
    from trainer.spo import __main__ as cli
    from trainer.spo import rundir

    real_save = torch.save

    def full_disk_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise _enospc(f)

    monkeypatch.setattr(rundir.torch, "save", full_disk_save)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    out = tmp_path / "out"
    rc = cli.main(["--model.source", str(sd15_dir), "--model.family", "sd15", "--scorer.source", "shapes-aesthetic",
                   "--prompts", str(prompts), "--output_dir", str(out), "--sampling.batch_size", "2", "--sampling.k", "2",
                   "--sampling.rounds_per_epoch", "1", "--sampling.branch_start", "17", "--sampling.threshold", "0",
                   "--train.batch_size", "2", "--train.epochs", "1", "--lora.rank", "2", "--validate_every", "5"])
    one_line_exit_2(rc, capsys.readouterr().err, "disk full: no space left on the disk holding", after_progress=True)
    assert no_temporaries(out) == [] and list((out / "checkpoints").glob("epoch-*")) == []
    assert not (out / "out.safetensors").exists() and not (out / "config.yaml").exists()


@pytest.mark.parametrize("fail_on", ["kohya", "diffusers", "config"])
def test_final_export_is_all_or_nothing(sd15_dir, tmp_path, monkeypatch, fail_on):
    import trainer.lora as lora_pkg
    import yaml
    from trainer.models import load_model
    from trainer.spo import train as train_module

    model = load_model(str(sd15_dir), family="sd15")
    cfg = tiny_cfg(tmp_path / "out")
    train_module.add_lora(model, cfg.lora)
    out = tmp_path / "out"
    out.mkdir()
    real = {"kohya": lora_pkg.save_kohya, "diffusers": lora_pkg.save_diffusers, "config": yaml.safe_dump}

    def failing(name):
        def f(*a, **k):
            if name == "config":
                raise _enospc(out / "config.yaml")
            real[name](*a, **k)
            raise _enospc(a[1])
        return f

    target = {"kohya": (lora_pkg, "save_kohya"), "diffusers": (lora_pkg, "save_diffusers"), "config": (train_module.yaml, "safe_dump")}
    monkeypatch.setattr(*target[fail_on], failing(fail_on))
    with pytest.raises(OSError):
        train_module.export_lora(out, model, cfg)
    assert sorted(p.name for p in out.iterdir()) == []  # nothing, and no temporary
    monkeypatch.undo()
    paths = train_module.export_lora(out, model, cfg)
    assert paths["kohya"].is_file() and (out / "diffusers" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "config.yaml").is_file() and no_temporaries(out) == []


def test_disk_full_on_a_real_small_tmpfs(sd15_dir, tmp_path):
    """A 64 KiB tmpfs when this machine lets us mount one (root in a container); skipped otherwise."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        from trainer.lora import read_lora
        from trainer.models import load_model
        from trainer.spo import train as train_module
        from trainer.lora import lora_from_peft, save_kohya

        model = load_model(str(sd15_dir), family="sd15")
        train_module.add_lora(model, tiny_cfg("x", **{"lora.rank": 64, "lora.alpha": 64.0}).lora)
        big = tmp_path / "big.safetensors"
        save_kohya(lora_from_peft(model.unet, component="unet", family="sd15"), big, dtype=torch.float32)
        assert big.stat().st_size > 64 * 1024
        err = subprocess.run([sys.executable, "-m", "trainer.lora", "convert", str(big), str(mnt / "c.safetensors"),
                              "--to", "diffusers", "--no-shape-check"], cwd=REPO, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
        one_line_exit_2(err.returncode, err.stderr, f"disk full: no space left on the disk holding {mnt}")
        assert list(mnt.iterdir()) == []
        read_lora(big, check_shapes=False)  # the source is untouched
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ====================================================================== trainer.lora and trainer.spm convert
@pytest.fixture(scope="module")
def kohya_file(sd15_dir, tmp_path_factory):
    from trainer.lora import lora_from_peft, save_kohya
    from trainer.models import load_model
    from trainer.spo import train as train_module

    model = load_model(str(sd15_dir), family="sd15")
    train_module.add_lora(model, tiny_cfg("x").lora)
    path = tmp_path_factory.mktemp("lora") / "spo.safetensors"
    save_kohya(lora_from_peft(model.unet, component="unet", family="sd15"), path)
    return path


def _bad_offsets(tmp: Path) -> str:
    import struct

    header = json.dumps({"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}).encode()
    p = tmp / "bad_offsets.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    return str(p)


LORA_CASES = [
    ("pickle", lambda t, k, m: ["inspect", _pickle(t / "evil.safetensors")], "never unpickled"),
    ("data-offsets", lambda t, k, m: ["inspect", _bad_offsets(t)], "not two increasing integers"),
    ("convert-onto-folder", lambda t, k, m: ["convert", str(k), str(t), "--no-shape-check"], "is a folder"),
    ("merge-out-is-model", lambda t, k, m: ["merge", str(k), "--model", str(m), "--out", str(m)], "is the --model folder"),
    ("merge-out-inside-model", lambda t, k, m: ["merge", str(k), "--model", str(m), "--out", str(m / "unet" / "x")],
     "is inside the --model folder"),
    ("merge-out-holds-model", lambda t, k, m: ["merge", str(k), "--model", str(m), "--out", str(m.parent)],
     "holds the --model"),
]


@pytest.mark.parametrize("case,build,needle", LORA_CASES, ids=[c[0] for c in LORA_CASES])
def test_lora_cli_bad_input_is_one_line(case, build, needle, kohya_file, sd15_dir, tmp_path, capsys):
    from trainer.lora.cli import main

    before = sorted(p.name for p in sd15_dir.rglob("*"))
    rc = main(build(tmp_path, kohya_file, sd15_dir))
    one_line_exit_2(rc, capsys.readouterr().err, needle)
    assert sorted(p.name for p in sd15_dir.rglob("*")) == before  # the model folder is untouched


@pytest.mark.parametrize("to", ["kohya", "diffusers", "peft"])
def test_lora_convert_disk_full_leaves_nothing(kohya_file, tmp_path, capsys, monkeypatch, to):
    import safetensors.torch
    from trainer.lora.cli import main

    real = safetensors.torch.save_file

    def full(tensors, filename, *a, **k):
        real(tensors, filename, *a, **k)
        raise _enospc(filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    rc = main(["convert", str(kohya_file), str(tmp_path / "o" / ("peft" if to == "peft" else "x.safetensors")),
               "--to", to, "--no-shape-check"])
    one_line_exit_2(rc, capsys.readouterr().err, "disk full")
    assert list((tmp_path / "o").iterdir()) == []


def test_lora_merge_disk_full_leaves_nothing_and_success_renames_a_whole_folder(kohya_file, sd15_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    from trainer.lora import cli

    real = cli.save_pipeline

    def full(model, out):
        real(model, out)  # most of the pipeline is on disk when the space runs out
        raise _enospc(Path(out) / "unet" / "diffusion_pytorch_model.safetensors")

    monkeypatch.setattr(cli, "save_pipeline", full)
    out = tmp_path / "merged"
    rc = cli.main(["merge", str(kohya_file), "--model", str(sd15_dir), "--out", str(out), "--no-shape-check"])
    one_line_exit_2(rc, capsys.readouterr().err, "disk full")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with _umask(0o002):
        assert cli.main(["merge", str(kohya_file), "--model", str(sd15_dir), "--out", str(out), "--no-shape-check"]) == 0
    assert (out / "model_index.json").is_file() and no_temporaries(tmp_path) == []
    weights = next(out.rglob("*.safetensors"))
    assert stat.S_IMODE(weights.stat().st_mode) == 0o664


@pytest.fixture(scope="module")
def released_spm(tmp_path_factory):
    from spm_fixtures import released_state_dict, tiny_clip, tiny_clip_config
    from trainer.spm.weights import spm_from_clip

    root = tmp_path_factory.mktemp("spm")
    src = root / "sd-v1-5_step-aware_preference_model.bin"
    torch.save(released_state_dict(spm_from_clip(tiny_clip(), step_aware=True)), src)
    cfg = root / "clip_config.json"
    tiny_clip_config().to_json_file(str(cfg))
    return src, cfg


SPM_CONVERT_CASES = [
    ("zero-byte-bin", lambda t, s: [_file(t, "sd15_x.bin", b""), str(t / "o")], "empty file (0 bytes)"),
    ("pickle-bin", lambda t, s: [_pickle(t / "evil.bin"), str(t / "o")], "never unpickled"),
    ("bad-offsets", lambda t, s: [_bad_offsets(t), str(t / "o")], "not a readable safetensors file"),
    ("dst-is-file", lambda t, s: [str(s), _file(t, "taken", b"x")], "exists and is a file"),
    ("dst-foreign-folder", lambda t, s: [str(s), _foreign(t)], "a folder holding other files"),
    ("dst-read-only", lambda t, s: [str(s), _read_only(t) + "/o"], "read-only"),
    ("bad-dtype", lambda t, s: [str(s), str(t / "o"), "--dtype", "fp8"], "--dtype must be one of"),
    ("missing-dst", lambda t, s: [str(s)], "missing DST"),
]


def _foreign(tmp: Path) -> str:
    (tmp / "docs").mkdir()
    (tmp / "docs" / "thesis.tex").write_text("keep me")
    return str(tmp / "docs")


_MOUNTED: list[Path] = []


def _read_only(tmp: Path) -> str:
    d = tmp / "ro"
    d.mkdir()
    d.chmod(0o555)
    if os.access(d, os.W_OK):  # root ignores modes: a read-only mount refuses root too
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(d)], capture_output=True).returncode:
            pytest.skip("running as root without a read-only mount")
        _MOUNTED.append(d)
    return str(d)


@pytest.fixture(autouse=True)
def _unmount():
    yield
    while _MOUNTED:
        subprocess.run(["umount", str(_MOUNTED.pop())], check=False)


@pytest.mark.parametrize("case,build,needle", SPM_CONVERT_CASES, ids=[c[0] for c in SPM_CONVERT_CASES])
def test_spm_convert_bad_input_is_one_line(case, build, needle, released_spm, tmp_path, capsys):
    from trainer.spm.cli import main

    src, clip_cfg = released_spm
    argv = build(tmp_path, src)
    rc = main(["convert", *argv, "--clip-config", str(clip_cfg)])
    one_line_exit_2(rc, capsys.readouterr().err, needle)
    if (tmp_path / "docs").exists():
        assert (tmp_path / "docs" / "thesis.tex").read_text() == "keep me"


def test_spm_convert_disk_full_leaves_nothing_then_writes_whole_with_the_umask(released_spm, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from trainer.spm.cli import main
    from trainer.spm.weights import load_spm

    src, clip_cfg = released_spm
    real = safetensors.torch.save_file

    def full(tensors, filename, *a, **k):
        real(tensors, filename, *a, **k)
        raise _enospc(filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    dst = tmp_path / "converted"
    one_line_exit_2(main(["convert", str(src), str(dst), "--clip-config", str(clip_cfg)]), capsys.readouterr().err,
                    "disk full")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with _umask(0o022):
        assert main(["convert", str(src), str(dst), "--clip-config", str(clip_cfg)]) == 0
    assert stat.S_IMODE((dst / "model.safetensors").stat().st_mode) == 0o644
    assert load_spm(dst).step_aware


# ====================================================================== umask
class _umask:
    def __init__(self, mask):
        self.mask = mask

    def __enter__(self):
        self.old = os.umask(self.mask)

    def __exit__(self, *exc):
        os.umask(self.old)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_loras_honour_the_umask(kohya_file, tmp_path, mask, mode):
    from trainer.lora import read_lora, save_diffusers, save_kohya

    state = read_lora(kohya_file, check_shapes=False)
    with _umask(mask):
        save_kohya(state, tmp_path / "k.safetensors")
        save_diffusers(state, tmp_path / "d.safetensors")
    for name in ("k.safetensors", "d.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_a_training_run_exports_readable_files(sd15_dir, tmp_path):
    with _umask(0o022):
        run(sd15_dir, tmp_path / "run", **{"train.epochs": 1})
    for p in [tmp_path / "run" / "run.safetensors", tmp_path / "run" / "diffusers" / "pytorch_lora_weights.safetensors",
              tmp_path / "run" / "config.yaml", *(tmp_path / "run" / "checkpoints").rglob("*.safetensors")]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


# ====================================================================== the A1111 extension
def _spm_folder(tmp: Path) -> tuple[Path, Path]:
    folder, outside = tmp / "models" / "spo", tmp / "private"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    (folder / "ok_sd15.bin").write_bytes(b"x")
    (folder / "sub" / "deep_sd15.bin").write_bytes(b"x")
    (outside / "secret_sd15.bin").write_bytes(b"x")
    (folder / "link_out_sd15.bin").symlink_to(outside / "secret_sd15.bin")
    (folder / "dirlink").symlink_to(outside, target_is_directory=True)
    return folder, outside


WEBUI_NAMES = [
    ("dotdot", "../private/secret_sd15.bin"),
    ("dotdot-missing", "../private/none_sd15.bin"),
    ("dotdot-inner", "sub/../../private/secret_sd15.bin"),
    ("absolute", "{outside}/secret_sd15.bin"),
    ("absolute-missing", "{outside}/none_sd15.bin"),
    ("symlink-file-out", "link_out_sd15.bin"),
    ("symlink-dir-out", "dirlink/secret_sd15.bin"),
    ("backslashes", "..\\private\\secret_sd15.bin"),
    ("nul", "ok_sd15.bin\x00.txt"),
    ("missing", "gone_sd15.bin"),
]


@pytest.mark.parametrize("case,name", WEBUI_NAMES, ids=[c[0] for c in WEBUI_NAMES])
def test_webui_opens_spm_files_only_inside_its_folder_and_tells_nothing_else(case, name, tmp_path):
    from webui_extension.spm_files import SPMUnavailable, resolve_spm

    folder, outside = _spm_folder(tmp_path)
    name = name.format(outside=outside)
    with pytest.raises(SPMUnavailable) as e:
        resolve_spm(str(folder), name)
    msg = str(e.value)
    assert msg.startswith("SPO: SPM ") and msg.endswith("not found in the SPM folder; pick one from the list.")
    assert str(tmp_path) not in msg and "\n" not in msg  # no server path; the same words whether it exists elsewhere


def test_webui_lists_and_opens_what_is_inside(tmp_path):
    from webui_extension.spm_files import hide_paths, list_spm_files, resolve_spm

    folder, _ = _spm_folder(tmp_path)
    assert list_spm_files(str(folder)) == ["ok_sd15.bin", "sub/deep_sd15.bin"]  # links out are not offered
    assert resolve_spm(str(folder), "sub/deep_sd15.bin") == str((folder / "sub" / "deep_sd15.bin").resolve())
    assert hide_paths(f"{folder}/sub/x.bin: damaged", str(folder)) == "sub/x.bin: damaged"


@pytest.mark.parametrize("k", ["inf", "-inf", "nan", "four", None, [4, 5], "1e400"])
def test_webui_k_that_is_not_a_number_is_the_documented_skip(k):
    from webui_extension.settings import SPOSettings

    from webui_extension.settings import K_MAX

    s = SPOSettings.from_args(True, "per-step", "ok_sd15.bin", k)
    if k is None:  # not sent: the default
        assert s.problem() is None
        return
    assert s.problem() == f"SPO: k must be a whole number from 2 to {K_MAX}; generated without SPO."


def test_webui_k_inf_through_the_script_writes_spo_skipped(tmp_path):
    import webui_harness as H
    from modules import errors

    runner, script, _ = H.setup_webui(tmp_path)
    _, res = H.run_txt2img(runner, H.spo_args(runner, k="inf"), prompt="a red square")
    assert errors.reported == []
    assert "k must be a whole number" in res.comments
    assert "SPO skipped" in res.infotexts[0] and "k must be a whole number" in res.infotexts[0]


# ====================================================================== ComfyUI nodes
def _comfy_nodes(tmp_path, monkeypatch):
    import shutil

    from tiny_models import write_tokenizer

    standin = tmp_path / "standin"
    shutil.copytree(REPO / "tests" / "comfy_standin", standin)
    write_tokenizer(standin / "comfy" / "sd1_tokenizer")
    models = tmp_path / "models"
    for d in ("checkpoints", "loras", "spo"):
        (models / d).mkdir(parents=True)
    monkeypatch.setenv("SPO_STANDIN_MODELS_DIR", str(models))
    monkeypatch.syspath_prepend(str(standin))
    for name in list(sys.modules):
        if name in ("folder_paths", "server", "comfy", "comfy_nodes") or name.startswith(("comfy.", "comfy_nodes.")):
            del sys.modules[name]
    import comfy_nodes

    return comfy_nodes, models


class _TinySPM:
    """Quacks like an SPM (score + model) but fails inside torch, as a mismatched device/dtype does."""

    family = "sd15"

    class model:  # noqa: N801 - attribute lookups only
        logit_scale = torch.zeros(())

    def score(self, images, prompts, t):
        return torch.ones(3, 3) @ torch.ones(4, 4)  # RuntimeError: shapes cannot be multiplied


COMFY_CASES = [
    ("score-spm-not-an-spm", "StepAwareScore", dict(images=torch.rand(2, 8, 8, 3), spm=object(), prompt="a"),
     "the spm input is not a preference model"),
    ("score-empty-batch", "StepAwareScore", dict(images=torch.rand(0, 8, 8, 3), spm=_TinySPM(), prompt="a"),
     "with B >= 1"),
    ("score-mask-not-image", "StepAwareScore", dict(images=torch.rand(2, 8, 8), spm=_TinySPM(), prompt="a"),
     "expected an IMAGE batch"),
    ("score-latent-dict", "StepAwareScore", dict(images={"samples": torch.rand(1, 4, 8, 8)}, spm=_TinySPM(), prompt="a"),
     "expected an IMAGE batch"),
    ("score-timestep", "StepAwareScore", dict(images=torch.rand(2, 8, 8, 3), spm=_TinySPM(), prompt="a", timestep=5000),
     "timestep must be 0..999"),
    ("score-torch-failure", "StepAwareScore", dict(images=torch.rand(2, 8, 8, 3), spm=_TinySPM(), prompt="a"),
     "the inputs do not fit together"),
    ("sampler-temperature-nan", "SPOSampler", dict(spm=_TinySPM(), vae=object(), prompt="a", selection="softmax",
                                                   temperature=float("nan")), "temperature must be a number > 0"),
    ("sampler-spm-not-an-spm", "SPOSampler", dict(spm=object(), vae=object(), prompt="a"), "not a preference model"),
    ("load-spm-missing", "LoadSPM", dict(spm_name="gone.bin"), "is not in models/spo"),
    ("load-spm-zero-byte", "LoadSPM", dict(spm_name="empty_sd15.bin"), "empty file (0 bytes)"),
    ("load-spm-pickle", "LoadSPM", dict(spm_name="evil_sd15.bin"), "never unpickled"),
]


@pytest.mark.parametrize("case,node,kwargs,needle", COMFY_CASES, ids=[c[0] for c in COMFY_CASES])
def test_comfy_nodes_turn_bad_input_into_one_message(case, node, kwargs, needle, tmp_path, monkeypatch):
    nodes, models = _comfy_nodes(tmp_path, monkeypatch)
    from comfy_nodes.errors import NodeInputError

    (models / "spo" / "empty_sd15.bin").write_bytes(b"")
    _pickle(models / "spo" / "evil_sd15.bin")
    obj = getattr(nodes, node)()
    call = {"StepAwareScore": lambda: obj.score(**{"timestep": 0, "top_n": 1, **kwargs}),
            "SPOSampler": lambda: obj.get_sampler(**kwargs),
            "LoadSPM": lambda: obj.load(**kwargs)}[node]
    with pytest.raises(NodeInputError) as e:
        call()
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and "weights_only=False" not in msg
    assert msg.startswith({"StepAwareScore": "StepAwareScore", "SPOSampler": "SPOSampler", "LoadSPM": "Load SPM"}[node])


def test_comfy_lora_loader_refuses_a_non_finite_strength(tmp_path, monkeypatch, kohya_file):
    import shutil

    nodes, models = _comfy_nodes(tmp_path, monkeypatch)
    from comfy_nodes.errors import NodeInputError

    shutil.copy(kohya_file, models / "loras" / "spo.safetensors")

    class Model:  # what model_family() reads: an SD-1.5 model config class name
        class model:  # noqa: N801
            class model_config:  # noqa: N801
                pass

    with pytest.raises(NodeInputError, match="strength_model must be a finite number, got nan"):
        nodes.SPOLoraLoader().load_lora(Model(), None, "spo.safetensors", float("nan"), 1.0)


def test_a_kill_between_the_two_renames_of_a_checkpoint_replacement_loses_nothing(tmp_path):
    """atomic_path moves a folder it replaces aside first; if killed before the new one lands, the
    next start puts the old one back instead of deleting it as a stale temporary."""
    from trainer.atomic import remove_stale_temporaries

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / ".epoch-0001.4242.old.tmp").mkdir()
    (ckpts / ".epoch-0001.4242.old.tmp" / "state.json").write_text("{}")
    (ckpts / ".epoch-0001.4242.tmp").mkdir()  # the half-written new one
    remove_stale_temporaries(ckpts)
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch-0001"]
    assert (ckpts / "epoch-0001" / "state.json").read_text() == "{}"
