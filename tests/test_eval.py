"""`python -m trainer.eval` end to end on ShapesWorld: images cached and reused, scores cached, the report's
numbers recomputed from the cached scores, the gallery's links, one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from eval_fixtures import sdxl_lora, shapes_lora
from trainer.eval.__main__ import main
from trainer.eval.stats import paired, summarize

FAST = ["--sampling.num_steps", "4", "--max_prompts", "3", "--sampling.images_per_prompt", "2", "--quiet"]


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return shapes_lora(tmp_path_factory.mktemp("lora") / "spo-test.safetensors", std=0.2)


def run(out, lora, *extra, scorers="shapes-aesthetic,shapes-utility"):
    return main(["--lora", str(lora), "--output_dir", str(out), "--scorers", scorers, *FAST, *extra])


def pngs(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}


def test_report_numbers_come_from_the_cached_scores(tmp_path, lora, capsys):
    out = tmp_path / "run"
    assert run(out, lora) == 0
    table = json.loads((out / "report.json").read_text())
    assert [v["label"] for v in table["variants"]] == ["base", "spo-test"]
    assert len(pngs(out)) == 2 * 3 * 2
    folders = {v["label"]: v["folder"] for v in table["variants"]}
    for label in ("shapes-aesthetic", "shapes-utility"):
        cache = json.loads((out / "scores" / f"{label}.json").read_text())["scores"]
        names = sorted(k.split("/")[1] for k in cache if k.startswith(folders["base"]))
        base = torch.tensor([cache[f"{folders['base']}/{n}"] for n in names], dtype=torch.float64)
        lo = torch.tensor([cache[f"{folders['spo-test']}/{n}"] for n in names], dtype=torch.float64)
        s = table["scorers"][label]
        # 3 prompts × 2 seeds, prompt-major: the mean of per-prompt means is the plain mean here
        assert s["models"]["base"]["mean"] == pytest.approx(float(base.mean()), abs=1e-6)
        assert s["vs_base"]["spo-test"]["diff"]["mean"] == pytest.approx(float((lo - base).mean()), abs=1e-6)
        assert s["vs_base"]["spo-test"]["win_rate"]["mean"] == pytest.approx(float((lo > base).double().mean()), abs=1e-6)
    md = (out / "report.md").read_text()
    assert "| shapes-aesthetic | spo-test |" in md and "win rate" in md
    # the ground truth of the cached PNGs, recomputed here, is what was stored
    from trainer.eval.generate import load_png
    from trainer.shapes import aesthetic

    name = next(iter(pngs(out)))
    cache = json.loads((out / "scores" / "shapes-aesthetic.json").read_text())["scores"]
    assert float(aesthetic(load_png(out / name)[None])[0]) == pytest.approx(cache[name.removeprefix("images/")], abs=1e-5)


def test_resume_regenerates_only_missing_images_and_a_new_scorer_loads_no_model(tmp_path, lora, monkeypatch):
    out = tmp_path / "run"
    assert run(out, lora) == 0
    before = pngs(out)
    victim = sorted(before)[3]
    (out / victim).unlink()
    assert run(out, lora) == 0
    after = pngs(out)
    assert set(after) == set(before)
    assert [k for k in before if after[k] != before[k]] == [victim]  # the others were not rewritten

    import trainer.models

    def no_model(*a, **k):
        raise AssertionError("a finished run rescored must not load the diffusion model")

    monkeypatch.setattr(trainer.models, "load_model", no_model)
    assert run(out, lora, scorers="shapes-aesthetic,shapes-utility,shapes-alignment") == 0
    assert pngs(out) == after
    table = json.loads((out / "report.json").read_text())
    assert set(table["scorers"]) == {"shapes-aesthetic", "shapes-utility", "shapes-alignment"}


def test_changed_sampler_settings_start_a_new_image_folder(tmp_path, lora):
    out = tmp_path / "run"
    assert run(out, lora, "--max_prompts", "1", "--sampling.images_per_prompt", "1") == 0
    assert run(out, lora, "--max_prompts", "1", "--sampling.images_per_prompt", "1", "--sampling.guidance_scale", "3") == 0
    assert len(list((out / "images").iterdir())) == 4  # base and LoRA, at two guidance scales


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self.cells += tag == "td"


def test_gallery_links_every_image_and_renders_in_headless_chromium(tmp_path, lora):
    out = tmp_path / "run"
    assert run(out, lora) == 0
    parser = _Links()
    parser.feed((out / "gallery.html").read_text())
    assert len(parser.images) == 12 and all((out / src).is_file() for src in parser.images)
    assert sorted(str(Path(s)) for s in parser.images) == sorted(p.removeprefix("") for p in pngs(out))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium here (apt-get install chromium) for the real-browser half")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
             "--window-size=1000,1400", "--virtual-time-budget=5000", f"--screenshot={shot}"]
    subprocess.run([chromium, *flags, (out / "gallery.html").as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image
    import numpy as np

    arr = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    chroma = arr.max(-1) - arr.min(-1)
    # ShapesWorld's saturated colours appear only if the <img> tags loaded and painted the PNGs
    assert (chroma > 120).mean() > 0.05


def test_stats_by_hand():
    v = torch.tensor([1.0, 3.0, 2.0, 4.0])
    idx = torch.tensor([0, 0, 1, 1])
    s = summarize(v, idx, 2)
    assert s["mean"] == 2.5 and s["lo"] == pytest.approx(2.5 - 12.706 * (0.5 * 2**0.5) / 2**0.5)
    p = paired(torch.tensor([2.0, 3.0, 5.0, 4.0]), v, idx, 2)
    assert p["diff"]["mean"] == pytest.approx(1.0) and p["win_rate"]["mean"] == pytest.approx(0.75)
    assert 0 <= p["win_rate"]["lo"] <= p["win_rate"]["hi"] <= 1


@pytest.mark.parametrize("args, needle", [
    (["--prompts", "missing.txt"], "--prompts: no such file"),
    (["--lora", "missing.safetensors"], "--lora: no such file"),
    (["--scorers", "hpsv2=missing.pt"], "--scorers hpsv2: no such file"),
    (["--scorers", "hpsv2"], "needs a file"),
    (["--model.source", "missing-dir/"], "--model.source"),
    (["--sampling.num_steps", "zero"], "--sampling.num_steps"),
    (["--sampling.nums_steps", "3"], "did you mean --sampling.num_steps"),
])
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, lora, capsys, args, needle):
    argv = ["--lora", str(lora), "--output_dir", str(tmp_path / "o"), "--quiet", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_wrong_family_lora_is_refused(tmp_path, capsys):
    path = sdxl_lora(tmp_path / "xl.safetensors")
    assert main(["--lora", str(path), "--output_dir", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "sdxl LoRA" in err and "shapes" in err and "\n" not in err


def test_no_arguments_without_a_default_run_says_to_train_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run([os.sys.executable, "-m", "trainer.eval"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 2
    assert "python -m trainer.spo" in proc.stderr and "Traceback" not in proc.stderr


def test_a_killed_run_resumes_where_it_stopped(tmp_path, lora, monkeypatch):
    import trainer.eval.generate as gen

    out, real_save, saved = tmp_path / "run", gen.save_png, []

    def dies_after_five(image, path):
        if len(saved) == 5:
            raise KeyboardInterrupt  # the run is killed while writing the sixth image
        real_save(image, path)
        saved.append(path.name)

    monkeypatch.setattr(gen, "save_png", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        run(out, lora)
    assert len(pngs(out)) == 5 and not (out / "report.json").exists()
    monkeypatch.setattr(gen, "save_png", real_save)
    first = pngs(out)
    assert run(out, lora) == 0
    after = pngs(out)
    assert len(after) == 12 and all(after[k] == first[k] for k in first)  # the five were kept as they were


def test_yaml_config_and_help(tmp_path, lora, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"lora: [{lora}]\nscorers: [shapes-aesthetic]\noutput_dir: {tmp_path / 'y'}\nmax_prompts: 1\n"
                   "sampling:\n  num_steps: 3\n  images_per_prompt: 1\n")
    assert main(["--config", str(cfg), "--sampling.guidance_scale", "2.5", "--quiet"]) == 0
    used = json.loads((tmp_path / "y" / "eval_config.json").read_text())
    assert used["sampling"]["num_steps"] == 3 and used["sampling"]["guidance_scale"] == 2.5 and used["scorers"] == ["shapes-aesthetic"]
    capsys.readouterr()
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for key in ("--model.source", "--lora", "--prompts", "--scorers", "--sampling.eta", "--assets.bert_tokenizer", "--preset"):
        assert key in text
    assert main(["--preset", "paper", "--help"]) == 0 and "paper's" in capsys.readouterr().out


def test_a_lora_of_another_model_is_refused_when_merged(tmp_path, capsys):
    from eval_fixtures import sd15_lora

    path = sd15_lora(tmp_path / "sd15.safetensors")
    argv = ["--lora", str(path), "--output_dir", str(tmp_path / "o"), "--scorers", "shapes-aesthetic", *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "sd15.safetensors" in err and "another model family" in err and "\n" not in err


def test_categories_of_a_prompt_set_get_their_own_means(tmp_path, lora):
    from trainer.shapes import heldout_captions

    tsv = tmp_path / "parti.tsv"
    caps = heldout_captions()[:3]
    tsv.write_text("Prompt\tCategory\n" + "".join(f"{c}\t{cat}\n" for c, cat in zip(caps, ("A", "B", "A"))))
    out = tmp_path / "run"
    assert run(out, lora, "--prompts", str(tsv)) == 0
    table = json.loads((out / "report.json").read_text())
    cache = json.loads((out / "scores" / "shapes-aesthetic.json").read_text())["scores"]
    base = next(v["folder"] for v in table["variants"] if v["label"] == "base")
    a = [v for k, v in cache.items() if k.startswith(base) and k.split("/")[1][:5] in ("00000", "00002")]
    assert table["scorers"]["shapes-aesthetic"]["by_category"]["A"]["base"] == pytest.approx(sum(a) / len(a), abs=1e-6)
    assert "shapes-aesthetic by category" in (out / "report.md").read_text()
