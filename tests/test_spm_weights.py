"""SPM files: released layout (.bin / .safetensors) loaded strictly, own format round trip, convert CLI."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spm_fixtures import randomize_adaln, released_state_dict, tiny_clip, tiny_clip_config, tokenizer_dir
from trainer.spm import SPMError, check_family, load_spm
from trainer.spm.model import StepAwarePreferenceModel
from trainer.spm.weights import LEGACY_BUFFERS, family_from_filename, read_state_dict

REPO = Path(__file__).resolve().parents[1]
KEY_LIST = REPO.parent / "shared" / "reference" / "spm-checkpoint-keys.tsv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 'trained' tiny SPM (non-identity adaLN) and its tokenizer dir."""
    from transformers import CLIPTokenizer

    tok_dir = tokenizer_dir(tmp_path_factory.mktemp("tok"))
    spm = StepAwarePreferenceModel(clip=tiny_clip(seed=3), tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir))).eval()
    randomize_adaln(spm, std=0.1)
    return spm, tok_dir


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 40, 40, generator=g) * 2 - 1, ["a red square", "a blue disc", "a red square"], torch.tensor([0, 400, 990])


def _write_bin(state, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_released_bin_loads_strictly_and_scores_identically(trained, inputs, tmp_path):
    spm, tok_dir = trained
    state = released_state_dict(spm)
    assert set(LEGACY_BUFFERS) <= set(state) and all(k.startswith("model.") for k in state)
    path = _write_bin(state, tmp_path / "sd-v1-5_step-aware_preference_model.bin")
    loaded = load_spm(path, config=tiny_clip_config(), tokenizer=str(tok_dir))
    assert loaded.step_aware and loaded.family == "sd15"
    for k, v in spm.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.allclose(loaded.score(*inputs), spm.score(*inputs), atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_released_safetensors_loads_the_same(trained, inputs, tmp_path):
    spm, tok_dir = trained
    path = tmp_path / "sdxl_step-aware_preference_model.safetensors"
    save_file({k: v.contiguous() for k, v in released_state_dict(spm).items()}, str(path))
    loaded = load_spm(path, config=tiny_clip_config(), tokenizer=str(tok_dir))
    assert loaded.family == "sdxl"
    assert torch.allclose(loaded.score(*inputs), spm.score(*inputs), atol=1e-6)


def test_file_without_legacy_buffers_loads_too(trained, tmp_path):
    spm, tok_dir = trained
    path = _write_bin(released_state_dict(spm, legacy_position_ids=False), tmp_path / "spm.bin")
    assert load_spm(path, config=tiny_clip_config(), tokenizer=str(tok_dir)).family is None


def test_half_precision_load(trained, inputs, tmp_path):
    spm, tok_dir = trained
    path = _write_bin(released_state_dict(spm), tmp_path / "spm.bin")
    half = load_spm(path, dtype=torch.bfloat16, config=tiny_clip_config(), tokenizer=str(tok_dir))
    assert half.model.logit_scale.dtype == torch.bfloat16
    ref = spm.score(*inputs)
    assert torch.allclose(half.score(*inputs), ref, atol=0.1 * ref.abs().max().item() + 0.05)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("model.vision_model.encoder.layers.1.adaLN_modulation.1.bias"), "1 missing (e.g. model.vision_model.encoder.layers.1.adaLN_modulation.1.bias)"),
        (lambda s: s.__setitem__("model.extra.weight", torch.zeros(2)), "1 unexpected (e.g. model.extra.weight)"),
        (lambda s: s.__setitem__("model.visual_projection.weight", torch.zeros(24, 41)), "has shape (24, 41), expected (24, 40)"),
        (lambda s: s.__setitem__(LEGACY_BUFFERS[1], torch.arange(17)[None].flip(1)), "legacy buffer"),
        (lambda s: [s.__setitem__("clip." + k[6:], s.pop(k)) for k in list(s)], "no 'model.*' keys"),
    ],
)
def test_wrong_checkpoints_are_refused_with_one_line(trained, tmp_path, mutate, message):
    state = released_state_dict(trained[0])
    mutate(state)
    path = _write_bin(state, tmp_path / "bad.bin")
    with pytest.raises(SPMError) as err:
        load_spm(path, config=tiny_clip_config())
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_different_clip_size_is_refused(trained, tmp_path):
    """The tiny file against the shipped CLIP-H config: a shape or key mismatch, never a partial load."""
    path = _write_bin(released_state_dict(trained[0]), tmp_path / "tiny.bin")
    with pytest.raises(SPMError, match="expected|missing"):
        load_spm(path)


class Payload:
    """Unpickling this would run code (creates a file); a weights-only loader must refuse it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_bin_with_a_pickled_object_is_refused_without_running_it(trained, tmp_path):
    marker = tmp_path / "code-ran"
    state = released_state_dict(trained[0])
    state["model.logit_scale"] = Payload(str(marker))
    path = _write_bin(state, tmp_path / "evil.bin")
    with pytest.raises(SPMError, match="refused, it holds objects other than tensors"):
        load_spm(path, config=tiny_clip_config())
    assert not marker.exists()


def test_bin_with_non_tensor_plain_values_is_refused(trained, tmp_path):
    state = released_state_dict(trained[0])
    state["epoch"] = 3
    with pytest.raises(SPMError, match="'epoch' is not a tensor"):
        read_state_dict(_write_bin(state, tmp_path / "x.bin"))


def test_truncated_and_missing_files(trained, tmp_path):
    good = _write_bin(released_state_dict(trained[0]), tmp_path / "good.bin")
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SPMError, match="truncated or damaged"):
        load_spm(cut, config=tiny_clip_config())
    bad_st = tmp_path / "cut.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SPMError, match="not a readable safetensors file"):
        load_spm(bad_st, config=tiny_clip_config())
    with pytest.raises(SPMError, match="no such SPM"):
        load_spm(tmp_path / "nope.bin")


def test_own_format_round_trip(trained, inputs, tmp_path):
    spm, _ = trained
    spm = copy.deepcopy(spm)
    spm.family = "shapes"
    out = spm.save_pretrained(tmp_path / "spm", training={"steps": 7})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "spo-studio-spm" and cfg["family"] == "shapes" and cfg["step_aware"] is True
    back = StepAwarePreferenceModel.from_pretrained(out)
    assert back.family == "shapes" and back.training_record == {"steps": 7}
    assert back.preprocess == spm.preprocess
    for k, v in spm.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert torch.equal(back.score(*inputs), spm.score(*inputs))
    # the same directory through load_spm, and its weights file keeps the released key names
    assert torch.equal(load_spm(out).score(*inputs), spm.score(*inputs))
    picked = load_spm(out / "model.safetensors")  # a host that lists files picks the weights file
    assert picked.family == "shapes" and torch.equal(picked.score(*inputs), spm.score(*inputs))
    assert set(read_state_dict(out / "model.safetensors")) == set(spm.state_dict())


def test_step_agnostic_round_trip_and_clip_dir(tmp_path, inputs):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir(tmp_path)))
    clip = tiny_clip(seed=5)
    agn = StepAwarePreferenceModel(clip=copy.deepcopy(clip), step_aware=False, tokenizer=tok)
    back = load_spm(agn.save_pretrained(tmp_path / "agn"))
    assert not back.step_aware
    assert torch.equal(back.score(*inputs), agn.score(*inputs))
    # a transformers CLIPModel directory (PickScore-style) loads as the step-agnostic scorer
    clip.save_pretrained(tmp_path / "clipdir")
    tok.save_pretrained(str(tmp_path / "clipdir" / "tokenizer"))
    as_clip = load_spm(tmp_path / "clipdir")
    assert not as_clip.step_aware
    # ...and sees images as CLIPImageProcessor makes them, as such a model was trained
    assert as_clip.preprocess.method == "clip" and agn.preprocess.method == "spo"
    agn.preprocess = dataclasses.replace(agn.preprocess, method="clip")
    assert torch.allclose(as_clip.score(*inputs), agn.score(*inputs), atol=1e-6)


def test_family_hints_and_check():
    assert family_from_filename("sd-v1-5_step-aware_preference_model.bin") == "sd15"
    assert family_from_filename("/x/sdxl_step-aware_preference_model.safetensors") == "sdxl"
    assert family_from_filename("my_spm.bin") is None
    spm = StepAwarePreferenceModel(clip=tiny_clip(), family="sdxl")
    with pytest.raises(SPMError, match="trained for sdxl but the model is sd15"):
        check_family(spm, "sd15")
    check_family(spm, "sdxl")
    spm.family = None
    check_family(spm, "sd15")  # unknown family: allowed


def test_convert_cli(trained, inputs, tmp_path, capsys):
    spm, tok_dir = trained
    src = _write_bin(released_state_dict(spm), tmp_path / "sd-v1-5_step-aware_preference_model.bin")
    cfg_file = tmp_path / "clip_config.json"
    tiny_clip_config().to_json_file(str(cfg_file))
    run = subprocess.run(
        [sys.executable, "-m", "trainer.spm", "convert", str(src), str(tmp_path / "out"), "--clip-config", str(cfg_file),
         "--tokenizer", str(tok_dir)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "step-aware, family sd15" in run.stdout
    out = load_spm(tmp_path / "out")
    assert out.family == "sd15" and (tmp_path / "out" / "tokenizer" / "tokenizer_config.json").is_file()
    assert torch.allclose(out.score(*inputs), spm.score(*inputs), atol=1e-6)
    # a bad file: exit code 2 and one line on stderr, no traceback
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a checkpoint")
    from trainer.spm.cli import main

    assert main(["convert", str(bad), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(bad) in err


def test_shipped_config_has_released_keys_and_shapes():
    """The shipped CLIP-H config builds exactly the released key list (checked on the meta device)."""
    from trainer.spm.weights import clip_h14_config

    with torch.device("meta"):
        spm = StepAwarePreferenceModel(clip_h14_config())
    ours = {k: tuple(v.shape) for k, v in spm.state_dict().items()}
    if not KEY_LIST.is_file():
        pytest.skip("reference key list not present beside the repository")
    expected = {}
    for line in KEY_LIST.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        expected[key] = () if shape == "scalar" else tuple(int(x) for x in shape.split("x"))
    assert set(expected) - set(ours) == set(LEGACY_BUFFERS)
    assert set(ours) <= set(expected)
    assert all(expected[k] == s for k, s in ours.items())
    assert sum(v.numel() for v in spm.state_dict().values()) == pytest.approx(1.306e9, rel=1e-3)


@pytest.mark.slow
def test_real_size_random_weights_in_released_layout(tmp_path):
    """CLIP-H-sized random weights saved as a released .bin (5.2 GB) load strictly and score."""
    from trainer.spm.weights import clip_h14_config

    torch.manual_seed(0)
    spm = StepAwarePreferenceModel(clip_h14_config())
    randomize_adaln(spm, std=0.01)
    path = _write_bin(released_state_dict(spm), tmp_path / "sd-v1-5_step-aware_preference_model.bin")
    del spm  # keep one copy in memory at a time (5.2 GB each)
    loaded = load_spm(path, tokenizer=str(tokenizer_dir(tmp_path)))
    on_disk = read_state_dict(path)  # memory-mapped
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, on_disk[k]), k
    assert loaded.family == "sd15" and loaded.preprocess.image_size == 224 and loaded.preprocess.method == "spo"
    scores = loaded.score(torch.rand(2, 3, 256, 320) * 2 - 1, ["a cat", "a dog"], torch.tensor([0, 750]))
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_bare_clip_state_dict_loads_as_step_agnostic(tmp_path, inputs):
    """PickScore's own pytorch_model.bin (CLIPModel keys, no `model.` prefix, 4.27 position_ids)."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir(tmp_path)))
    ref = StepAwarePreferenceModel(clip=tiny_clip(seed=7), step_aware=False, tokenizer=tok)
    state = {k[len("model."):]: v for k, v in released_state_dict(ref).items()}
    assert "text_model.embeddings.position_ids" in state
    loaded = load_spm(_write_bin(state, tmp_path / "pytorch_model.bin"), config=tiny_clip_config(), tokenizer=tok)
    assert not loaded.step_aware
    assert torch.equal(loaded.score(*inputs), ref.score(*inputs))


def test_a_local_tokenizer_path_is_bundled_on_save(tmp_path, inputs):
    spm = StepAwarePreferenceModel(clip=tiny_clip(seed=2), tokenizer=str(tokenizer_dir(tmp_path / "t")))
    out = spm.save_pretrained(tmp_path / "o")
    assert json.loads((out / "config.json").read_text())["tokenizer"] == "tokenizer"
    assert torch.equal(load_spm(out).score(*inputs), spm.score(*inputs))


def test_an_spm_trained_here_uses_the_reference_recipe(tmp_path):
    """trainer.spm starts from a PickScore-style folder (CLIPImageProcessor's recipe) but trains, and
    records, the released SPMs' recipe."""
    from types import SimpleNamespace

    from trainer.spm.train import initial_spm

    clip = tiny_clip(seed=3)
    clip.save_pretrained(tmp_path / "clipdir")
    tokenizer_dir(tmp_path / "clipdir")  # the folder's own tokenizer/
    assert load_spm(tmp_path / "clipdir").preprocess.method == "clip"
    spm = initial_spm(SimpleNamespace(init=str(tmp_path / "clipdir"), step_aware=True), "sd15")
    assert spm.preprocess.method == "spo"
    back = load_spm(spm.save_pretrained(tmp_path / "trained"))
    assert back.preprocess.method == "spo"
