"""The family table (trainer/families.py) is what every family-dependent piece reads."""
import json
from pathlib import Path

import pytest
import torch

from trainer import families
from trainer.configs import load_component_config
from trainer.families import FAMILIES, REAL_FAMILIES
from trainer.lora import LoraModule, LoraState
from trainer.lora.export import kohya_metadata
from trainer.lora.families import family_from_metadata

REPO = Path(__file__).resolve().parents[1]


def _state(family: str) -> LoraState:
    return LoraState({"unet.conv_in": LoraModule(torch.zeros(2, 4, 3, 3), torch.zeros(320, 2, 1, 1), 2.0)}, family, "kohya")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_metadata_written_from_the_table_reads_back_as_the_family(family):
    meta = kohya_metadata(_state(family), family, output_name="x")
    row = FAMILIES[family]
    assert meta["ss_base_model_version"] == row.ss_base_model_version
    assert meta["modelspec.resolution"] == f"{row.resolution}x{row.resolution}"
    assert family_from_metadata(meta) == family  # our own record
    del meta["spo_studio.family"]  # as another tool's file: the real family whose layout it has
    assert family_from_metadata(meta) == families.host_family(family)


@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_the_shipped_unet_configs_match_their_signature_and_no_other(family):
    assert families.family_of_unet_config(load_component_config(family, "unet")) == family


def test_the_shapesworld_unet_is_no_real_family():
    cfg = json.loads((REPO / "trainer/shapes/weights/pipeline/unet/config.json").read_text())
    assert families.family_of_unet_config(cfg) is None


def test_released_spm_names_and_hosts_map_to_their_family():
    for name in REAL_FAMILIES:
        row = FAMILIES[name]
        assert families.family_from_spm_filename(row.released_spm) == name
        assert all(families.family_of_comfy_model(c) == name for c in row.comfy_model_configs)
    assert families.family_from_spm_filename("my_spm.bin") is None
    assert families.family_of_comfy_model("SD3") is None
    assert families.family_of_checkpoint_keys(["conditioner.embedders.1.model.ln_final.weight"]) == "sdxl"
    assert families.family_of_checkpoint_keys(["cond_stage_model.transformer.text_model.x"]) == "sd15"


def test_presets_take_their_base_model_and_spm_from_the_table():
    from trainer.spo.config import PRESETS

    for name in REAL_FAMILIES:
        assert PRESETS[name]["model.source"] == FAMILIES[name].base_model
        assert PRESETS[name]["scorer.source"] == FAMILIES[name].released_spm


def test_unknown_family_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown model family 'sd3'; use sd15, sdxl, shapes"):
        families.get("sd3")
