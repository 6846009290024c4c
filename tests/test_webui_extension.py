"""The A1111 extension against the WebUI stand-in: install layouts, accordion and API args,
SPO-guided txt2img end to end, best-of-k, infotext and paste, bad input."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

import webui_harness as H
from modules import errors, infotext_utils, script_callbacks, script_loading, shared


def images_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)) and len(a) == len(b)


# ------------------------------------------------------------------ install layouts


@pytest.mark.parametrize("how", ["repo", "link", "copy"])
def test_extension_loads_registers_script_tab_and_option(tmp_path, how):
    runner, spo, module = H.setup_webui(tmp_path, how)
    assert errors.reported == []
    want = {"repo": H.REPO, "link": H.REPO, "copy": tmp_path / "extensions" / "spo-copy"}[how]
    assert Path(module.__file__).resolve().is_relative_to(want.resolve())  # the installed copy runs
    assert spo.alwayson and spo.args_to - spo.args_from == 11
    tabs = script_callbacks.ui_tabs_callback()
    assert [(title, elem) for _, title, elem in tabs] == [("SPO Scorer", "spo_scorer")]
    parser = argparse.ArgumentParser()
    script_loading.preload_extensions(str(tmp_path / "extensions"), parser)
    assert parser.parse_args(["--spo-models-dir", "/x/spm"]).spo_models_dir == "/x/spm"
    assert parser.parse_args([]).spo_models_dir is None


def test_both_installs_at_once_do_not_clash(tmp_path):
    H.install(tmp_path, "repo")
    ext = H.install(tmp_path, "copy")
    parser = argparse.ArgumentParser()
    script_loading.preload_extensions(str(ext), parser)
    assert errors.reported == []
    assert parser.parse_args(["--spo-models-dir", "d"]).spo_models_dir == "d"


def test_spo_models_dir_option_is_used(tmp_path):
    runner, spo, module = H.setup_webui(tmp_path)
    other = tmp_path / "elsewhere"
    (other / "nested").mkdir(parents=True)
    (other / "nested" / "mine_sd15.safetensors").write_bytes(b"")
    (other / "notes.txt").write_text("not a model")
    shared.cmd_opts.spo_models_dir = str(other)
    assert module.list_spm_files(module.spm_dir()) == ["nested/mine_sd15.safetensors"]
    p, res = H.run_txt2img(runner, H.spo_args(runner, spm="nested/mine_sd15.safetensors"), batch_size=1)
    assert "SPO SPM: nested/mine_sd15.safetensors" in res.infotexts[0]


# ------------------------------------------------------------------ UI, API


def test_accordion_controls_and_api_args(tmp_path):
    runner, spo, _ = H.setup_webui(tmp_path)
    controls = runner.inputs[spo.args_from:spo.args_to]
    assert [c.value for c in controls] == [False, "best-of-k", "red_sd15.pt", 4, 0.2, 1.0, "best", 1.0, 4, "difference", 16.0]
    assert controls[2].choices == ["red_sd15.pt", "red_sdxl.pt"]
    assert controls[1].choices == ["per-step", "best-of-k", "fk"]
    # API callers may send fewer args: the rest keep the UI defaults
    args = runner.api_args({"spo": {"args": [True, "best-of-k", "red_sdxl.pt", 3]}})
    assert args[spo.args_from:spo.args_to] == [True, "best-of-k", "red_sdxl.pt", 3, 0.2, 1.0, "best", 1.0, 4, "difference", 16.0]
    # picking a guided mode moves the judged-step sliders to what the bench measured for it
    fn, inputs, outputs = controls[1].events[0]
    assert outputs == [controls[4], controls[5], controls[8]]
    assert [u["value"] for u in fn("fk")] == [0.4, 0.7, 4]
    assert [u["value"] for u in fn("per-step")] == [0.2, 1.0, 4]


# ------------------------------------------------------------------ per-step SPO


def test_per_step_spo_selects_by_the_spm_and_writes_infotext(tmp_path):
    runner, spo, module = H.setup_webui(tmp_path)
    _, plain = H.run_txt2img(runner)
    p, res = H.run_txt2img(runner, H.spo_args(runner, k=4))
    assert errors.reported == [] and res.comments == ""
    assert len(res.images) == 2
    # the SPM (red is better) steered every image: higher score than the same seed without SPO
    for a, b in zip(res.images, plain.images):
        assert H.red_score(a) > H.red_score(b) + 0.5
    for image, text in zip(res.images, res.infotexts):
        params = infotext_utils.parse_generation_parameters(text)
        assert params["SPO"] == "per-step" and params["SPO SPM"] == "red_sd15.pt" and params["SPO k"] == "4"
        assert params["SPO window"] == "0-1" and params["SPO selection"] == "best"
        assert "SPO temperature" not in params  # only written for softmax
        assert float(params["SPO score"]) == pytest.approx(H.red_score(image), abs=0.1)
        assert image.info["parameters"] == text


def test_per_step_calls_model_per_sample_batch_and_keeps_step_counter(tmp_path):
    runner, spo, module = H.setup_webui(tmp_path)
    steps, k = 8, 3
    p, res = H.run_txt2img(runner, H.spo_args(runner, k=k, window_start=0.5, window_end=1.0), steps=steps,
                           prompt="(a red square:1.2) <lora:spo:1>")
    cfg = p.sampler.model_wrap_cfg
    # 8 steps, steps 4..6 branch (step 7 goes to σ = 0): the chosen candidate's x̂0 serves the next
    # step, so 8 − 3 fresh forwards + 3 branched steps × k candidate chunks of the batch
    assert len(cfg.steps_seen) == steps - 3 + 3 * k
    # every call of the CFG denoiser sees the sampling step it serves (prompt editing relies on it)
    expected = []
    for i in range(steps):
        if i == 0 or not (4 <= i - 1 <= 6):
            expected.append(i)  # a fresh forward at step i (after a branched step the chosen x̂0 is reused)
        if 4 <= i <= 6:
            expected += [i + 1] * k  # candidates are evaluated at σ_{i+1}
    assert cfg.steps_seen == expected
    assert set(shared.sd_model.model_wrap.calls) == {2 * 2}  # always [cond; uncond] for the batch of 2
    spm = module.SPM_CACHE.get(str(tmp_path / "models/spo/red_sd15.pt")).model
    branch_calls = [c for c in spm.calls if c[0] == 2 * k]
    assert len(branch_calls) == 3
    # candidate scoring uses the host's σ → t: candidates at σ_{i+1} of the 8-step schedule
    sig = shared.sd_model.model_wrap.get_sigmas(steps)
    want_t = [int(shared.sd_model.model_wrap.sigma_to_t(sig[i + 1]).round()) for i in (4, 5, 6)]
    assert [c[2][0] for c in branch_calls] == want_t
    assert all(c[1] == ["a red square"] * (2 * k) for c in branch_calls)  # WebUI markup removed for the SPM


def test_per_step_image_does_not_depend_on_its_batch(tmp_path):
    # A1111 draws every image's noise from its own seed; SPO's candidates must too
    runner, spo, _ = H.setup_webui(tmp_path)
    _, pair = H.run_txt2img(runner, H.spo_args(runner), batch_size=2, seed=50)
    _, alone = H.run_txt2img(runner, H.spo_args(runner), batch_size=1, seed=51)
    a, b = np.asarray(pair.images[1], dtype=int), np.asarray(alone.images[0], dtype=int)
    assert np.abs(a - b).max() <= 1


def test_softmax_selection_and_karras_schedule(tmp_path):
    runner, spo, _ = H.setup_webui(tmp_path)
    args = H.spo_args(runner, selection="softmax", temperature=0.5)
    p1, r1 = H.run_txt2img(runner, args, sampler_name="Euler Karras")
    p2, r2 = H.run_txt2img(runner, args, sampler_name="Euler Karras")
    assert errors.reported == [] and images_equal(r1.images, r2.images)  # seeded: repeatable
    params = infotext_utils.parse_generation_parameters(r1.infotexts[0])
    assert params["SPO selection"] == "softmax" and params["SPO temperature"] == "0.5"


@pytest.mark.parametrize("sampler", ["DDIM", "DPM++ SDE-like"])
def test_other_samplers_run_spo(tmp_path, sampler):
    # DDIM steps in timesteps (replaced by a k-diffusion sampler); the SDE one adds noise_sampler=
    runner, spo, _ = H.setup_webui(tmp_path)
    p, res = H.run_txt2img(runner, H.spo_args(runner), sampler_name=sampler, batch_size=1)
    assert errors.reported == [] and res.comments == ""
    assert "SPO score: " in res.infotexts[0] and f"Sampler: {sampler}" in res.infotexts[0]


def test_fk_mode_costs_what_the_strategy_says_steers_and_reports_judged_steps(tmp_path, monkeypatch):
    from trainer.spo.strategies import StrategyConfig, resampling_steps, strategy_cost

    runner, spo, module = H.setup_webui(tmp_path)
    seen = []
    monkeypatch.setattr(module, "_show_progress", lambda mode, d, t: seen.append((mode, d, t)))
    _, plain = H.run_txt2img(runner)
    steps, k = 10, 3
    p, res = H.run_txt2img(runner, H.spo_args(runner, mode="fk", k=k, window_start=0.2, window_end=0.8, judge_every=2,
                                              potential="sum", lam=8.0), steps=steps)
    assert errors.reported == [] and res.comments == ""
    sig = shared.sd_model.model_wrap.get_sigmas(steps)
    config = StrategyConfig(name="fk", k=k, window=(0.2, 0.8), every=2, potential="sum", lam=8.0)
    judged = resampling_steps(config, sig)
    assert judged == [2, 4, 6]
    # the CFG denoiser holds B = 2 conditionings: k·B particle rows go through in k calls per step
    cfg = p.sampler.model_wrap_cfg
    assert len(cfg.steps_seen) == 1 + k * (steps - 1) == strategy_cost(config, sig).model_evals
    spm = module.SPM_CACHE.get(str(tmp_path / "models/spo/red_sd15.pt")).model
    judge_calls = [c for c in spm.calls if c[0] == 2 * k]
    assert len(judge_calls) == len(judged) + 1  # each resampling step and the final pick, one batch each
    assert judge_calls[-1][2] == [0] * (2 * k)
    assert seen == [("fk", d, 4) for d in range(1, 5)] * 1
    for a, b, text in zip(res.images, plain.images, res.infotexts):
        assert H.red_score(a) > H.red_score(b) + 0.5  # the SPM (red is better) steered every image
        params = infotext_utils.parse_generation_parameters(text)
        assert params["SPO"] == "fk" and params["SPO k"] == "3" and params["SPO window"] == "0.2-0.8"
        assert params["SPO judge every"] == "2" and params["SPO potential"] == "sum" and params["SPO lambda"] == "8"
        assert "SPO selection" not in params


# ------------------------------------------------------------------ best-of-k


def test_best_of_k_keeps_the_best_image_per_prompt(tmp_path):
    runner, spo, _ = H.setup_webui(tmp_path)
    seed, k = 300, 3
    p, res = H.run_txt2img(runner, H.spo_args(runner, mode="best-of-k", k=k), batch_size=2, seed=seed)
    _, plain = H.run_txt2img(runner, batch_size=6, seed=seed)  # seeds 300..305: every candidate
    assert errors.reported == [] and len(res.images) == 2
    assert res.batch_size == 2 and res.all_seeds == p.seeds and len(res.all_prompts) == 2
    for j, (image, text) in enumerate(zip(res.images, res.infotexts)):
        candidates = [seed + j + m * 2 for m in range(k)]  # copy m of image j: seed + j + m·N
        scores = {s: H.red_score(plain.images[s - seed]) for s in candidates}
        best = max(candidates, key=scores.get)
        params = infotext_utils.parse_generation_parameters(text)
        assert int(params["Seed"]) == best
        assert np.array_equal(np.asarray(image), np.asarray(plain.images[best - seed]))
        assert params["SPO"] == "best-of-k" and params["SPO k"] == "3" and "SPO window" not in params
        assert float(params["SPO score"]) == pytest.approx(scores[best], abs=0.1)


# ------------------------------------------------------------------ paste ("send to txt2img")


def test_paste_restores_spo_settings_and_turns_spo_off_without_them(tmp_path):
    runner, spo, _ = H.setup_webui(tmp_path)
    _, res = H.run_txt2img(runner, H.spo_args(runner, k=5, window_start=0.25, window_end=0.75, selection="softmax",
                                              temperature=2.0), batch_size=1)
    fields = spo.infotext_fields
    assert set(spo.paste_field_names) == {"SPO", "SPO SPM", "SPO k", "SPO selection", "SPO temperature", "SPO potential",
                                          "SPO lambda"}
    assert infotext_utils.paste(fields, res.infotexts[0]) == [True, "per-step", "red_sd15.pt", 5.0, 0.25, 0.75, "softmax", 2.0,
                                                               1, "difference", 16.0]
    _, plain = H.run_txt2img(runner, batch_size=1)
    assert infotext_utils.paste(fields, plain.infotexts[0]) == [False] + [None] * 10


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "spo, prompt, message",
    [
        (dict(spm="gone.pt"), "a red square", "not found"),
        (dict(spm="red_sdxl.pt"), "a red square", "is for SDXL but the loaded checkpoint is SD-1.5"),
        (dict(k=1), "a red square", "k must be at least 2"),
        (dict(spm=""), "a red square", "no step-aware preference model selected"),
        (dict(mode="bogus"), "a red square", "mode must be one of"),
        (dict(window_start=0.9, window_end=0.1), "a red square", "branching window"),
        (dict(), "   ", "cannot score this batch (ValueError: SPM score: prompts must be non-empty"),
        (dict(), "<lora:only_a_lora:1>", "cannot score this batch (ValueError: SPM score: prompts must be non-empty"),
        (dict(spm="broken_sd15.pt"), "a red square", "could not load SPM"),
    ],
)
def test_bad_input_generates_without_spo_and_says_why(tmp_path, spo, prompt, message):
    runner, script, _ = H.setup_webui(tmp_path, spm_files=("red_sd15.pt", "red_sdxl.pt", "broken_sd15.pt"))
    _, plain = H.run_txt2img(runner, prompt=prompt)
    _, res = H.run_txt2img(runner, H.spo_args(runner, **spo), prompt=prompt)
    assert errors.reported == []  # no hook raised
    assert images_equal(res.images, plain.images)  # exactly what SPO-off gives
    assert message in res.comments and res.comments.count("\n") == 1
    for text in res.infotexts:
        params = infotext_utils.parse_generation_parameters(text)
        assert message in params["SPO skipped"]  # API callers read it from the infotext
        assert not {"SPO", "SPO score", "SPO k"} & set(params)
        assert infotext_utils.paste(script.infotext_fields, text)[0] is False  # pasting keeps SPO off


def test_sdxl_spm_on_sdxl_model_runs(tmp_path):
    runner, spo, _ = H.setup_webui(tmp_path, sdxl=True)
    _, res = H.run_txt2img(runner, H.spo_args(runner, spm="red_sdxl.pt"), batch_size=1)
    assert res.comments == "" and "SPO SPM: red_sdxl.pt" in res.infotexts[0]
    _, res = H.run_txt2img(runner, H.spo_args(runner, spm="red_sd15.pt"), batch_size=1)
    assert "is for SD-1.5 but the loaded checkpoint is SDXL" in res.comments


# ------------------------------------------------------------------ the documented API request


def test_readme_api_example_runs(tmp_path):
    import json
    import re

    readme = (H.REPO / "webui_extension" / "README.md").read_text()
    request = json.loads(re.search(r"```json\n(.*?)```", readme, re.S).group(1))
    spo = request["alwayson_scripts"]["SPO"]["args"]
    runner, script, _ = H.setup_webui(tmp_path, spm_files=(spo[2],))
    args = runner.api_args(request["alwayson_scripts"])
    p, res = H.run_txt2img(runner, args, prompt=request["prompt"], negative_prompt=request["negative_prompt"],
                           steps=request["steps"], sampler_name=request["sampler_name"], seed=request["seed"],
                           batch_size=request["batch_size"], cfg_scale=request["cfg_scale"])
    assert errors.reported == [] and res.comments == "" and len(res.images) == 2
    params = infotext_utils.parse_generation_parameters(res.infotexts[0])
    assert params["SPO"] == "per-step" and params["SPO SPM"] == spo[2] and params["SPO window"] == "0.2-1"


# ------------------------------------------------------------------ img2img


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_img2img_per_step_and_best_of_k(tmp_path, sampler):
    from PIL import Image

    runner, spo, _ = H.setup_webui(tmp_path, img2img=True)
    assert spo.elem_id("k") == "script_img2img_spo_k"
    init = Image.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8))
    sampler_off = "Euler a"  # the stand-in does not simulate DDIM itself
    _, plain = H.run_img2img(runner, init, sampler_name=sampler_off)
    _, res = H.run_img2img(runner, init, H.spo_args(runner, k=4), sampler_name=sampler)
    assert errors.reported == [] and res.comments == "" and len(res.images) == 2
    assert all(H.red_score(a) > H.red_score(b) for a, b in zip(res.images, plain.images))
    assert all("SPO: per-step" in t for t in res.infotexts)
    _, best = H.run_img2img(runner, init, H.spo_args(runner, mode="best-of-k", k=3), sampler_name=sampler_off)
    assert errors.reported == [] and len(best.images) == 2 and best.all_seeds[0] in (77, 79, 81)


def test_spm_failing_mid_sampling_finishes_the_image_and_says_so(tmp_path):
    runner, spo, _ = H.setup_webui(tmp_path, spm_files=("flaky_sd15.pt",))
    p, res = H.run_txt2img(runner, H.spo_args(runner, spm="flaky_sd15.pt"), batch_size=2, n_iter=2)
    assert errors.reported == [] and len(res.images) == 4
    # batch 1: fails at its second branched step, finishes without selection; batch 2: refused up front
    assert "SPO: the SPM failed at t=" in res.comments and "CUDA out of memory" in res.comments
    assert "SPO: the SPM cannot score this batch (RuntimeError: CUDA out of memory)" in res.comments
    for text in res.infotexts:
        params = infotext_utils.parse_generation_parameters(text)
        assert "SPO score" not in params and "CUDA out of memory" in params["SPO skipped"]


def test_copied_folder_without_the_library_says_how_to_fix(tmp_path):
    """A copy of webui_extension/ in a WebUI whose Python lacks spo-studio: one clear line, no script."""
    import subprocess
    import sys

    ext = H.install(tmp_path, "copy")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "sys.modules['spo_studio'] = None;"  # not installed (even where CI pip-installed the repository)
        "from modules import scripts; scripts.load_scripts(sys.argv[2]);"
        "print('SCRIPTS', len(scripts.scripts_data))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(H.STANDIN), str(ext)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "the spo-studio library (`spo_studio`) is not importable" in out.stdout and "SCRIPTS 0" in out.stdout
