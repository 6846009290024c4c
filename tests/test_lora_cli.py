"""`python -m trainer.lora`: inspect, convert, merge, and one-line errors with exit code 2."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fixtures_lora import tiny_sd15_unet, tiny_sdxl_unet, unet_inputs, unet_out
from test_lora_hosts import lora_layers, pipeline, trained_lora
from trainer.lora import apply_lora, read_lora, save_kohya
from trainer.lora.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args):
    """The CLI as a user runs it (separate process): (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "trainer.lora", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    return proc.returncode, proc.stdout, proc.stderr


def run_inline(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_line_error(result, path, words):
    rc, out, err = result
    assert rc == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and str(path) in lines[0] and words in lines[0], lines[0]


def real_shaped_sd15_lora(path):
    """Diffusers-old layout with the real SD-1.5 shapes of a few attention layers (rank 1: tiny file)."""
    tensors = {}
    for block, width in ((0, 320), (1, 640)):
        name = f"unet.down_blocks.{block}.attentions.0.transformer_blocks.0.attn2.to_k"
        tensors[f"{name}.lora.down.weight"] = torch.randn(1, 768)
        tensors[f"{name}.lora.up.weight"] = torch.randn(width, 1)
    save_file(tensors, str(path))


def real_shaped_sdxl_kohya(path):
    """kohya LDM names with the real SDXL shapes (attn2.to_k reads the 2048-wide text states)."""
    tensors = {
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_down.weight": torch.randn(2, 2048),
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_up.weight": torch.randn(640, 2),
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.alpha": torch.tensor(1.0),
        "lora_unet_output_blocks_2_2_conv.lora_down.weight": torch.randn(2, 1280, 3, 3),
        "lora_unet_output_blocks_2_2_conv.lora_up.weight": torch.randn(1280, 2, 1, 1),
    }
    save_file(tensors, str(path))


def test_inspect_detects_family_from_real_shapes(tmp_path, capsys):
    real_shaped_sd15_lora(tmp_path / "a.safetensors")
    rc, out, _ = run_inline(capsys, "inspect", tmp_path / "a.safetensors")
    assert rc == 0
    assert "layout:     diffusers_old" in out and "family:     sd15" in out
    assert "rank(s):    1 (2)" in out and "alpha = rank" in out and "attn2.to_k x2" in out

    real_shaped_sdxl_kohya(tmp_path / "x.safetensors")
    rc, out, _ = run_inline(capsys, "inspect", tmp_path / "x.safetensors", "--modules")
    assert rc == 0 and "family:     sdxl" in out and "layout:     kohya" in out
    assert "unet.up_blocks.0.upsamplers.0.conv  rank 2" in out
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k  rank 2  alpha 1" in out


def test_convert_to_kohya_names_and_metadata(tmp_path, capsys):
    real_shaped_sd15_lora(tmp_path / "a.safetensors")
    rc, out, _ = run_inline(capsys, "convert", tmp_path / "a.safetensors", tmp_path / "k.safetensors", "--name", "spo")
    assert rc == 0 and "wrote" in out
    state = read_lora(tmp_path / "k.safetensors")
    assert state.layout == "kohya" and state.family == "sd15"
    assert state.metadata["ss_output_name"] == "spo" and state.metadata["ss_network_dim"] == "1"
    assert state.metadata["ss_network_alpha"] == "1.0"  # the source had no alpha: alpha = rank keeps scale 1
    assert all(m.down.dtype == torch.float16 for m in state.modules.values())


def test_the_cli_process_exits_2_with_one_line(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a LoRA file at all, just some text")
    assert_one_line_error(run_cli("inspect", text), text, "not a safetensors file")


def test_bad_inputs_fail_with_one_line_and_exit_2(tmp_path, capsys):
    def run_cli(*args):
        return run_inline(capsys, *args)

    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a LoRA file at all, just some text")
    assert_one_line_error(run_cli("inspect", text), text, "not a safetensors file")

    missing = tmp_path / "missing.safetensors"
    assert_one_line_error(run_cli("inspect", missing), missing, "no such file")

    good = tmp_path / "good.safetensors"
    real_shaped_sd15_lora(good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_one_line_error(run_cli("convert", cut, tmp_path / "o.safetensors"), cut, "truncated")
    assert not (tmp_path / "o.safetensors").exists()

    assert_one_line_error(run_cli("convert", good, tmp_path / "o.safetensors", "--family", "sdxl"), good, "does not fit sdxl")
    assert not (tmp_path / "o.safetensors").exists()

    half = tmp_path / "half.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(1, 4)}, str(half))
    assert_one_line_error(run_cli("inspect", half, "--family", "sd15"), half, "no up weight")

    nothing = tmp_path / "nothing.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(1)}, str(nothing))
    assert_one_line_error(run_cli("inspect", nothing), nothing, "no LoRA weights")


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle was (not) loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.ckpt"])
def test_pickle_files_are_refused_never_unpickled(tmp_path, capsys, name):
    def run_cli(*args):
        return run_inline(capsys, *args)

    marker = tmp_path / "unpickled"
    evil = tmp_path / name
    evil.write_bytes(pickle.dumps({"lora_unet_x.lora_down.weight": _Payload(marker)}, protocol=4))
    assert_one_line_error(run_cli("inspect", evil), evil, "never unpickled")
    torch_zip = tmp_path / ("zip_" + name)
    torch.save({"w": torch.zeros(1)}, torch_zip)
    assert_one_line_error(run_cli("convert", torch_zip, tmp_path / "o.safetensors"), torch_zip, "never unpickled")
    assert not marker.exists()


def test_merge_cli_equals_applying_the_lora(tmp_path, capsys):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    model_dir = tmp_path / "model"
    pipeline("sd15", tmp_path).save_pretrained(model_dir)
    state = trained_lora("sd15", {"conv1": 3.0})
    lora = tmp_path / "lora.safetensors"
    save_kohya(state, lora, dtype=torch.float32)

    rc, out, err = run_inline(capsys, "merge", lora, "--model", model_dir, "--out", tmp_path / "merged", "--scale", "0.5")
    assert rc == 0, err
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged" / "unet")
    assert not lora_layers(merged)
    applied = tiny_sd15_unet()
    apply_lora(applied, state, scale=0.5)
    x = unet_inputs(applied)
    torch.testing.assert_close(unet_out(merged, x), unet_out(applied, x), rtol=0, atol=1e-5)
    te = CLIPTextModel.from_pretrained(tmp_path / "merged" / "text_encoder")
    base_te = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
    ids = torch.tensor([[0, 3, 2]])
    assert (te(ids).last_hidden_state - base_te(ids).last_hidden_state).abs().max() > 1e-3

    xl = tmp_path / "xl.safetensors"
    save_kohya(trained_lora("sdxl", {}), xl)
    assert_one_line_error(run_inline(capsys, "merge", xl, "--model", model_dir, "--out", tmp_path / "m2"), xl,
                          "cannot be merged into the shapes model")
    assert not (tmp_path / "m2").exists()


def spo_release_like(family, rank, path):
    """The official SPO release layout at real size: diffusers-old keys on every attention
    projection (to_q, to_k, to_v, to_out.0) of the real UNet, fp32, no alphas."""
    import re

    from trainer.lora.families import real_module_table

    tensors = {}
    for name, shape in real_module_table(family)["unet"].items():
        out_f, in_f = shape[0], shape[1]
        if re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", name):
            tensors[f"unet.{name}.lora.down.weight"] = torch.randn(rank, in_f) * 0.01
            tensors[f"unet.{name}.lora.up.weight"] = torch.randn(out_f, rank) * 0.01
    save_file(tensors, str(path))
    return tensors


@pytest.mark.parametrize("family,rank,layers", [("sd15", 4, 128), ("sdxl", 1, 560)])
def test_real_size_spo_release_layout_converts_for_webui(family, rank, layers, tmp_path, capsys):
    src = tmp_path / "spo_lora_diffusers.safetensors"
    spo_release_like(family, rank, src)
    if family == "sd15":  # the official spo-sd-v1-5_4k-p_10ep_lora_diffusers.safetensors is 3.2 MB
        assert 3.1e6 < src.stat().st_size < 3.3e6
    out = tmp_path / "spo_webui.safetensors"
    rc, _, err = run_inline(capsys, "convert", src, out)  # family detected from the shapes
    assert rc == 0, err
    state = read_lora(out)
    assert (state.family, state.layout, len(state.modules)) == (family, "kohya", layers)
    with __import__("safetensors").safe_open(str(out), "pt") as f:
        keys = list(f.keys())
    assert len(keys) == 3 * layers and all(k.startswith("lora_unet_") for k in keys)
    if family == "sdxl":
        assert "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k.alpha" in keys
        assert "lora_unet_output_blocks_2_1_transformer_blocks_9_attn1_to_out_0.lora_up.weight" in keys
    else:
        assert "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_v.lora_down.weight" in keys
    assert state.metadata["ss_network_dim"] == str(rank) and state.metadata["ss_network_alpha"] == f"{rank:.1f}"


def test_unknown_keys_are_reported_not_dropped_silently(tmp_path, capsys):
    src = tmp_path / "mixed.safetensors"
    real_shaped_sd15_lora(src)
    from safetensors.torch import load_file

    tensors = load_file(str(src))
    tensors["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_magnitude_vector"] = torch.ones(320)
    save_file(tensors, str(src))
    rc, out, _ = run_inline(capsys, "inspect", src)
    assert rc == 0 and "unknown:    1 keys" in out and "lora_magnitude_vector" in out
    rc, _, err = run_inline(capsys, "convert", src, tmp_path / "k.safetensors")
    assert rc == 0 and err.startswith("warning: ") and "1 keys are not LoRA weights" in err

    loha = tmp_path / "loha.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": torch.zeros(4, 2),
               "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(2.0)}, str(loha))
    assert_one_line_error(run_inline(capsys, "inspect", loha), loha, "no LoRA weights of a known layout")
