"""Prompt-set readers: each released file layout, captions de-duplicated in order, one-line errors."""
from __future__ import annotations

import json

import pytest

from trainer.eval.config import ConfigError
from trainer.eval.prompts import read_prompts


def test_plain_text_skips_blanks_and_duplicates(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a cat\n\n  a dog  \na cat\nthe  sea\n")
    s = read_prompts(str(p))
    assert s.prompts == ["a cat", "a dog", "the sea"] and s.categories is None


def test_partiprompts_tsv(tmp_path):
    p = tmp_path / "PartiPrompts.tsv"
    p.write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\na red, round apple\tFood & Beverage\tColors\tx\n")
    s = read_prompts(str(p))
    assert s.prompts == ["bond", "a red, round apple"] and s.categories == ["Abstract", "Food & Beverage"]


def test_drawbench_csv_with_quoted_commas(tmp_path):
    p = tmp_path / "drawbench.csv"
    p.write_text('Prompts,Category\n"A red colored car, parked.",Colors\nA triangle.,Shapes\n')
    s = read_prompts(str(p))
    assert s.prompts == ["A red colored car, parked.", "A triangle."] and s.categories == ["Colors", "Shapes"]


def test_hpdv2_benchmark_folder_and_single_files(tmp_path):
    bench = tmp_path / "benchmark"
    bench.mkdir()
    for style, prompts in (("photo", ["p1", "p2"]), ("anime", ["a1"]), ("paintings", ["x", "p1"])):
        (bench / f"{style}.json").write_text(json.dumps(prompts))
    s = read_prompts(str(bench))
    assert s.prompts == ["a1", "x", "p1", "p2"] and s.categories == ["anime", "paintings", "paintings", "photo"]
    (tmp_path / "ir.json").write_text(json.dumps([{"id": "1", "prompt": "one"}, {"id": "2", "prompt": "two"}]))
    assert read_prompts(str(tmp_path / "ir.json")).prompts == ["one", "two"]


def test_shapes_sets():
    assert len(read_prompts("shapes-heldout").prompts) == 16
    assert read_prompts("shapes-heldout").head(3).prompts == read_prompts("shapes-heldout").prompts[:3]


@pytest.mark.parametrize("content, name, needle", [
    (None, "missing.txt", "no such file"),
    ("Text,Other\n", "x.csv", "holds no prompts"),
    ("Foo,Bar\nx,y\n", "y.csv", "no Prompt/Prompts/caption column"),
    ('{"a": 1}', "z.json", "should hold a list"),
    ("\n\n", "e.txt", "holds no prompts"),
])
def test_bad_prompt_files_are_one_line(tmp_path, content, name, needle):
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(ConfigError, match=needle) as e:
        read_prompts(str(p))
    assert "\n" not in str(e.value)


def _pickapic_rows():
    # Pick-a-Pic v1 columns (a subset): one row per image pair, so captions repeat across rows
    return {"caption": ["a fox", "a fox", "blue sky", "", "a fox  "], "jpg_0": [b"\x89PNG"] * 5, "label_0": [1.0, 0.0, 0.5, 1.0, 1.0]}


def test_pickapic_parquet_folder_reads_validation_unique_captions_once(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    data = tmp_path / "pickapic_v1" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.table(_pickapic_rows()), data / "validation_unique-00000-of-00001-abc.parquet")
    pq.write_table(pa.table({"caption": ["train only"], "jpg_0": [b""], "label_0": [1.0]}), data / "train-00000-of-00647.parquet")
    s = read_prompts(str(tmp_path / "pickapic_v1"))
    assert s.prompts == ["a fox", "blue sky"]
    assert read_prompts(str(data / "validation_unique-00000-of-00001-abc.parquet")).prompts == ["a fox", "blue sky"]


def test_datasets_save_to_disk_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")

    folder = tmp_path / "validation_unique"
    folder.mkdir()
    table = pa.table(_pickapic_rows())
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)  # the Arrow stream format datasets.save_to_disk writes
    (folder / "dataset_info.json").write_text("{}")
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    assert read_prompts(str(folder)).prompts == ["a fox", "blue sky"]


def test_a_real_datasets_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")

    ds = datasets.DatasetDict({"validation_unique": datasets.Dataset.from_dict(_pickapic_rows())})
    ds.save_to_disk(str(tmp_path / "pickapic"))
    assert read_prompts(str(tmp_path / "pickapic" / "validation_unique")).prompts == ["a fox", "blue sky"]
    assert read_prompts(str(tmp_path / "pickapic")).prompts == ["a fox", "blue sky"]  # the DatasetDict: its split
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(_pickapic_rows())}).save_to_disk(str(tmp_path / "train_only"))
    with pytest.raises(ConfigError, match="pass its split folder"):
        read_prompts(str(tmp_path / "train_only"))
