"""Pick-a-Pic-layout pairs: writer, reader, `datasets`-style tables, image preparation."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.spm import SPMError
from trainer.spm.data import HFPairs, PairCollate, PickapicDir, image_to_tensor, open_pairs, write_pickapic_dir


def _rgb(h, w, value):
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_write_and_read_back(tmp_path):
    png = io.BytesIO()
    Image.fromarray(_rgb(6, 6, 30)).save(png, format="JPEG")
    rows = [
        dict(caption="a red square", jpg_0=_rgb(8, 8, 200), jpg_1=Image.fromarray(_rgb(8, 8, 10)), label_0=1, label_1=0),
        dict(caption="tie", jpg_0=torch.zeros(3, 4, 4), jpg_1=png.getvalue(), label_0=0.5, label_1=0.5),
    ]
    meta = write_pickapic_dir(rows, tmp_path / "d")
    lines = [json.loads(x) for x in meta.read_text().splitlines()]
    assert lines[0] == {"caption": "a red square", "jpg_0": "images/000000_0.png", "jpg_1": "images/000000_1.png",
                        "label_0": 1.0, "label_1": 0.0}
    ds = open_pairs(tmp_path / "d")
    assert isinstance(ds, PickapicDir) and len(ds) == 2
    assert np.array_equal(np.asarray(ds[0].image_0), _rgb(8, 8, 200))  # PNG: lossless
    assert np.asarray(ds[1].image_0).max() == 128  # tensor 0.0 in [-1, 1] -> mid grey
    assert (ds[1].label_0, ds[1].label_1) == (0.5, 0.5)
    assert not (tmp_path / "d" / "metadata.jsonl.tmp").exists()


@pytest.mark.parametrize(
    "row, message",
    [
        (dict(caption="x", jpg_0=_rgb(2, 2, 0), jpg_1=_rgb(2, 2, 0), label_0=0.7, label_1=0.7), "sum to 1"),
        (dict(caption="x", jpg_0=_rgb(2, 2, 0), jpg_1=_rgb(2, 2, 0), label_0=1.0), "missing keys ['label_1']"),
        (dict(caption=" ", jpg_0=_rgb(2, 2, 0), jpg_1=_rgb(2, 2, 0), label_0=1.0, label_1=0.0), "empty caption"),
        (dict(caption="x", jpg_0=np.zeros((2, 2)), jpg_1=_rgb(2, 2, 0), label_0=1.0, label_1=0.0), "HxWx3 uint8"),
    ],
)
def test_writer_refuses_bad_rows(tmp_path, row, message):
    with pytest.raises(SPMError, match="row 0") as err:
        write_pickapic_dir([row], tmp_path / "d")
    assert message in str(err.value)


def test_reader_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(SPMError, match="no metadata.jsonl"):
        PickapicDir(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"caption": "a", "jpg_0": "a.png", "jpg_1": "b.png", "label_0": 1, "label_1": 0}\n{oops\n')
    with pytest.raises(SPMError, match=r"metadata.jsonl:2: not valid JSON"):
        PickapicDir(tmp_path)


def test_datasets_style_table():
    """Rows as the `datasets` Pick-a-Pic v1 table gives them: encoded image bytes (or {'bytes': ...})."""
    buf = io.BytesIO()
    Image.fromarray(_rgb(5, 7, 90)).save(buf, format="PNG")
    table = [dict(caption="c", jpg_0=buf.getvalue(), jpg_1={"bytes": buf.getvalue(), "path": None}, label_0=0.0, label_1=1.0,
                  best_image_uid="ignored")]
    pairs = HFPairs(table)
    p = pairs[0]
    assert p.image_0.size == (7, 5) and np.asarray(p.image_1)[0, 0, 0] == 90 and p.label_1 == 1.0
    with pytest.raises(SPMError, match="lacks Pick-a-Pic columns"):
        HFPairs([dict(caption="c", image=b"")])


def test_open_pairs_without_datasets_package(tmp_path):
    """The message must say what to install when `datasets` is missing."""
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed here")
    with pytest.raises(SPMError, match="pip install datasets"):
        open_pairs(tmp_path / "not-a-dir")


def test_image_to_tensor_resizes_shortest_side_and_crops():
    img = Image.fromarray(np.concatenate([_rgb(20, 10, 0), _rgb(20, 20, 255), _rgb(20, 10, 0)], axis=1))  # 20×40
    t = image_to_tensor(img, 10)
    assert t.shape == (3, 10, 10)
    assert t.min() > 0.8 and t[:, :, 2:8].min() == 1.0  # the centre crop is the white band (edges: bicubic ringing)
    assert image_to_tensor(Image.fromarray(_rgb(8, 8, 0)), 8).eq(-1).all()
    batch = PairCollate(8)([open_pairs_pair()] * 3)
    assert batch.images_0.shape == (3, 3, 8, 8) and batch.label_0.tolist() == [1.0] * 3 and len(batch) == 3


def open_pairs_pair():
    from trainer.spm.data import PreferencePair

    return PreferencePair("c", Image.fromarray(_rgb(12, 16, 1)), Image.fromarray(_rgb(12, 16, 2)), 1.0, 0.0)
