"""The "SPO Scorer" tab and the extension with a real (tiny) SPM loaded by trainer.spm."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import webui_harness as H
from modules import errors, infotext_utils, script_callbacks


def scorer_button(tmp_path):
    """The tab's "Score" click handler, as the WebUI would call it."""
    (tab, title, _), = script_callbacks.ui_tabs_callback()

    def walk(block):
        yield block
        for child in block.children:
            yield from walk(child)

    button = next(b for b in walk(tab) if getattr(b, "value", None) == "Score")
    fn, inputs, outputs = button.events[0]
    return fn


def write_images(tmp_path, reds):
    """PNG files whose red channel is constant `r` (RedSPM's score is 10·(r/127.5 − 1))."""
    files = []
    for i, r in enumerate(reds):
        arr = np.zeros((24, 16 + 8 * i, 3), dtype=np.uint8)  # uploads differ in size
        arr[..., 0] = r
        path = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(path)
        files.append(str(path))
    return files


def test_scorer_tab_ranks_uploads(tmp_path):
    H.setup_webui(tmp_path)
    score = scorer_button(tmp_path)
    files = write_images(tmp_path, [10, 200, 90])
    gallery, rows, message = score(files, "a red square", "red_sd15.pt", 0)
    assert [r[:2] for r in rows] == [[1, "img1.png"], [2, "img2.png"], [3, "img0.png"]]
    assert [r[2] for r in rows] == pytest.approx([10 * (v / 127.5 - 1) for v in (200, 90, 10)], abs=1e-3)
    assert [caption.split()[0] for _, caption in gallery] == ["#1", "#2", "#3"]
    assert message.startswith("Scored 3 image(s)")


@pytest.mark.parametrize(
    "files, prompt, spm, message",
    [
        ([], "p", "red_sd15.pt", "Drop one or more images"),
        (None, "", "red_sd15.pt", "Enter the prompt"),
        (None, "p", "nope.pt", "not found"),
        (["missing.png"], "p", "red_sd15.pt", "SPO Scorer: FileNotFoundError"),
    ],
)
def test_scorer_tab_bad_input_is_a_message(tmp_path, files, prompt, spm, message):
    H.setup_webui(tmp_path)
    files = write_images(tmp_path, [1]) if files is None else files
    gallery, rows, text = scorer_button(tmp_path)(files, prompt, spm, 0)
    assert gallery == [] and rows == [] and message in text


# ------------------------------------------------------------------ the real SPM (tiny)


@pytest.fixture
def tiny_spm_dir(tmp_path):
    """A tiny step-aware SPM in spo-studio's own format under models/spo/tiny-sd15."""
    from transformers import CLIPTokenizer

    from spm_fixtures import randomize_adaln, tiny_clip_config, tokenizer_dir
    from trainer.spm import StepAwarePreferenceModel

    torch.manual_seed(0)
    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir(tmp_path / "tok")))
    spm = StepAwarePreferenceModel(config=tiny_clip_config(), tokenizer=tok, family="sd15").eval()
    randomize_adaln(spm)
    out = tmp_path / "models" / "spo" / "tiny-sd15"
    spm.save_pretrained(out)
    return out


def test_real_spm_from_models_folder_scores_infotext_and_tab(tmp_path, tiny_spm_dir):
    from trainer.spm import load_spm

    runner, spo, module = H.setup_webui(tmp_path)
    module.SPM_CACHE.loader = None  # trainer.spm.load_spm, as in the WebUI
    assert "tiny-sd15" in module.list_spm_files(module.spm_dir())
    p, res = H.run_txt2img(runner, H.spo_args(runner, spm="tiny-sd15", k=2), batch_size=2, steps=6)
    assert errors.reported == [] and res.comments == ""
    reference = load_spm(tiny_spm_dir)
    for image, text in zip(res.images, res.infotexts):
        params = infotext_utils.parse_generation_parameters(text)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        want = float(reference.score(pixels, ["a red square"], torch.zeros(1, dtype=torch.long))[0])
        assert float(params["SPO score"]) == pytest.approx(want, abs=0.05)
    # the scorer tab ranks with the same model
    files = [str(tmp_path / f"out{i}.png") for i in range(2)]
    for img, f in zip(res.images, files):
        img.save(f)
    _, rows, _ = scorer_button(tmp_path)(files, "a red square", "tiny-sd15", 0)
    scores = {f"out{i}.png": float(infotext_utils.parse_generation_parameters(t)["SPO score"]) for i, t in enumerate(res.infotexts)}
    assert [r[1] for r in rows] == sorted(scores, key=lambda n: -scores[n])


def test_real_spm_sdxl_family_is_refused_on_sd15(tmp_path, tiny_spm_dir):
    import json

    cfg_path = tiny_spm_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["family"] = "sdxl"
    cfg_path.write_text(json.dumps(cfg))
    runner, spo, module = H.setup_webui(tmp_path)
    module.SPM_CACHE.loader = None
    _, res = H.run_txt2img(runner, H.spo_args(runner, spm="tiny-sd15"), batch_size=1)
    assert "is for SDXL but the loaded checkpoint is SD-1.5" in res.comments
    params = infotext_utils.parse_generation_parameters(res.infotexts[0])
    assert "SPO score" not in params and "is for SDXL" in params["SPO skipped"]


# ------------------------------------------------------------------ released scorers (tiny, released layouts)


@pytest.mark.parametrize("kind, make, name", [
    ("hpsv2", "save_tiny_hpsv2", "hps/HPS_v2_compressed.pt"),
    ("imagereward", "save_tiny_imagereward", "ir/ImageReward.pt"),
])
def test_scorer_tab_ranks_with_hpsv2_and_imagereward(tmp_path, monkeypatch, kind, make, name):
    import scorer_fixtures
    import trainer.scorers.hpsv2 as hpsv2
    import trainer.scorers.imagereward as imagereward
    from trainer.scorers import ScorerSpec, load_scorer

    from webui_extension.scorer_tab import pil_to_tensor

    monkeypatch.setattr(hpsv2, "vit_h14_config", scorer_fixtures.tiny_openclip_config)  # tiny sizes, real layout
    monkeypatch.setattr(imagereward, "default_config", scorer_fixtures.tiny_imagereward_config)
    H.setup_webui(tmp_path)
    path = getattr(scorer_fixtures, make)(tmp_path / "models" / "spo" / name.split("/")[0])
    files = write_images(tmp_path, [10, 200, 90, 40])
    gallery, rows, message = scorer_button(tmp_path)(files, "a red square", name, 0, kind)
    assert message.startswith("Scored 4 image(s)"), message
    direct = load_scorer(ScorerSpec(kind, kind, str(path)))
    want = {f"img{i}.png": float(direct.score(pil_to_tensor(Image.open(f)), ["a red square"], None)[0]) for i, f in enumerate(files)}
    assert [r[1] for r in rows] == sorted(want, key=lambda n: -want[n])
    assert [r[2] for r in rows] == pytest.approx(sorted(want.values(), reverse=True), abs=1e-4)


def test_scorer_tab_unloadable_scorer_is_a_message(tmp_path):
    H.setup_webui(tmp_path)
    (tmp_path / "models" / "spo" / "ImageReward.pt").write_bytes(b"junk")
    files = write_images(tmp_path, [1])
    gallery, rows, text = scorer_button(tmp_path)(files, "p", "ImageReward.pt", 0, "imagereward")
    assert gallery == [] and rows == [] and "ImageReward.pt" in text and "\n" not in text
