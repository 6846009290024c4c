"""Build stages "preference" (PickScore-style CLIP on generic labels) and "spm" (its step-aware
version, trained by the project's SPM trainer as a user would run it). With
`preference_sample_pairs` both need the pipeline stage first: those pairs are its own samples."""
from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

PAIRS_TRAIN, PAIRS_EVAL = "pairs_train", "pairs_eval"
_LIBRARY = __name__.partition(".")[0]  # `trainer` in the repository, `spo_studio` when pip-installed


def _pairs(cfg, out: Path, scratch: Path, log):
    """Train/eval pairs (deterministic from the seed) and their Pick-a-Pic-layout directories.

    Two kinds, both labelled by the same noisy rater: renders at random quality (some with one
    attribute wrong) and, if asked for, pairs of the shipped base pipeline's own samples.
    Returns (train, {"renders": eval[, "samples": eval]}); sampled pairs are cached in `scratch`
    (minutes to make).
    """
    from dataclasses import asdict

    import torch

    from .preference_data import Pairs, concat, make_pairs, sample_pairs, write_pairs
    from .world import heldout_captions, train_captions

    train = make_pairs(train_captions(), cfg.preference_pairs, seed=cfg.seed + 10)
    evals = {"renders": make_pairs(heldout_captions(), max(64, cfg.preference_pairs // 24), seed=cfg.seed + 11)}
    if cfg.preference_sample_pairs:
        cache = scratch / f"sample_pairs_{cfg.preference_sample_pairs}_seed{cfg.seed}.pt"
        if cache.exists():
            sampled = {k: Pairs(**v) for k, v in torch.load(cache).items()}
        else:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"), safety_checker=None)
            pipe.set_progress_bar_config(disable=True)
            log(f"sampling {cfg.preference_sample_pairs} pairs from {out / 'pipeline'}")
            sampled = {"train": sample_pairs(pipe, train_captions(), cfg.preference_sample_pairs, seed=cfg.seed + 30),
                       "eval": sample_pairs(pipe, heldout_captions(), max(64, cfg.preference_sample_pairs // 8),
                                            seed=cfg.seed + 31)}
            torch.save({k: asdict(v) for k, v in sampled.items()}, cache)
        train, evals["samples"] = concat(train, sampled["train"]), sampled["eval"]
    all_evals = functools.reduce(concat, evals.values())
    for name, pairs in ((PAIRS_TRAIN, train), (PAIRS_EVAL, all_evals)):
        if not (scratch / name / "metadata.jsonl").exists():
            write_pairs(pairs, scratch / name)
            log(f"wrote {len(pairs.captions)} pairs to {scratch / name}")
    return train, evals


def stage_preference(cfg, out: Path, scratch: Path, log) -> dict:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from .train_preference import pair_accuracy, train_preference

    t0 = time.time()
    train, evals = _pairs(cfg, out, scratch, log)
    t_pairs = time.time() - t0
    clip_dir = out / "clip"
    model = CLIPModel.from_pretrained(str(clip_dir))
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir))
    before = {k: pair_accuracy(model.eval(), tokenizer, v) for k, v in evals.items()}
    t0 = time.time()
    model = train_preference(model, tokenizer, train, cfg.preference_steps, seed=cfg.seed + 12, log=log)
    t_train = time.time() - t0
    after = {k: pair_accuracy(model, tokenizer, v) for k, v in evals.items()}
    # about 2,000 train pairs, strided so that they span both kinds of pair
    after_train = pair_accuracy(model, tokenizer, train.every(max(1, len(train.captions) // 2000)))
    dst = out / "preference"
    model.save_pretrained(str(dst))
    tokenizer.save_pretrained(str(dst))
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(str(dst))
    if (clip_dir / "merges.txt").exists():  # absent from a clip/ written by an older build
        from .build import copy_slow_tokenizer_files

        copy_slow_tokenizer_files(clip_dir, dst)
    oracle = {}
    for k, v in evals.items():
        decided = v.label_0 != 0.5
        oracle[k] = float(((v.utility_0 > v.utility_1).float() == v.label_0)[decided].float().mean())
        log(f"preference accuracy on held-out {k} pairs: before {before[k]['accuracy_vs_labels']:.3f}, after "
            f"{after[k]['accuracy_vs_labels']:.3f} (noise-free rater {oracle[k]:.3f})")
    return {"train_pairs": {"renders": cfg.preference_pairs, "base_model_samples": cfg.preference_sample_pairs},
            "eval_pairs": {k: f"{len(v.captions)} pairs on held-out captions" for k, v in evals.items()},
            "seeds": {"train_pairs": cfg.seed + 10, "eval_pairs": cfg.seed + 11, "sampled_train_pairs": cfg.seed + 30,
                      "sampled_eval_pairs": cfg.seed + 31, "training": cfg.seed + 12},
            "steps": cfg.preference_steps, "init": "clip (contrastive pretraining)",
            "seconds": {"pairs": round(t_pairs, 1), "train": round(t_train, 1)},
            "accuracy_before": before, "accuracy_after": after, "accuracy_on_train_pairs": after_train,
            "noise_free_rater_accuracy_vs_labels": oracle,
            "label_mix": "0.6 * aesthetic/10 + 0.4 * alignment, sigmoid temperature 0.05, tie below 0.02"}


def stage_spm(cfg, out: Path, scratch: Path, log) -> dict:
    """Runs `python -m trainer.spm train --preset shapes` on the same pairs, then ships its result."""
    if not (scratch / PAIRS_TRAIN / "metadata.jsonl").exists():
        _pairs(cfg, out, scratch, log)
    run = scratch / "spm_run"
    cmd = [sys.executable, "-m", _LIBRARY + ".spm", "train", "--preset", "shapes", "--base-model", str(out / "pipeline"),
           "--init", str(out / "preference"), "--data", str(scratch / PAIRS_TRAIN), "--eval-data",
           str(scratch / PAIRS_EVAL), "--out", str(run), "--seed", str(cfg.seed + 20), "--lr", str(cfg.spm_lr), "--progress", "false"]
    if cfg.spm_steps:
        cmd += ["--max-steps", str(cfg.spm_steps)]
    log("running " + " ".join(cmd))
    t0 = time.time()
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise SystemExit(f"SPM training failed (exit {done.returncode}); see its output above")
    dst = out / "spm"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(run / "spm", dst)
    from .build import scrub_paths

    scrub_paths(dst, scratch, out)
    report = json.loads((run / "eval.json").read_text())
    shown = " ".join(a if not a.startswith(str(scratch)) else "<scratch>" + a[len(str(scratch)):] for a in cmd[1:])
    shown = shown.replace(str(out), "<weights>")
    return {"spm_command": "python " + shown, "seconds": round(time.time() - t0, 1), "steps": report.get("steps"),
            "accuracy_by_timestep_before (= preference model)": report.get("before"),
            "accuracy_by_timestep_after (= spm)": report.get("after")}
