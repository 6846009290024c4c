"""Generic preference pairs of ShapesWorld: renders, and the base model's own samples."""
import pytest
import torch

from trainer.shapes.preference_data import concat, make_pairs, sample_pairs
from trainer.shapes.truth import preference_utility
from trainer.shapes.world import heldout_captions, train_captions


@pytest.fixture(scope="module")
def shipped_pipe():
    from diffusers import StableDiffusionPipeline

    from trainer.shapes.shipped import WEIGHTS

    pipe = StableDiffusionPipeline.from_pretrained(str(WEIGHTS / "pipeline"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_make_pairs_is_deterministic_and_concat_keeps_order():
    p = make_pairs(train_captions(), 12, seed=1)
    assert torch.equal(p.images_0, make_pairs(train_captions(), 12, seed=1).images_0)
    assert torch.equal(p.utility_0, preference_utility(p.images_0, p.captions))
    q = make_pairs(train_captions(), 5, seed=2)
    both = concat(p, q)
    assert both.captions == p.captions + q.captions and torch.equal(both.images_1[12:], q.images_1)
    assert torch.equal(both.label_0[:12], p.label_0)


def test_sample_pairs_are_deterministic_samples_of_the_pipeline(shipped_pipe):
    caps = heldout_captions()[:3]
    p = sample_pairs(shipped_pipe, caps, 4, seed=5, steps=4)
    q = sample_pairs(shipped_pipe, caps, 4, seed=5, steps=4)
    assert torch.equal(p.images_0, q.images_0) and torch.equal(p.label_0, q.label_0)
    assert set(p.captions) <= set(caps) and p.images_0.shape == (4, 3, 64, 64)
    assert float(p.images_0.min()) >= -1 and float(p.images_0.max()) <= 1
    assert float((p.images_0 - p.images_1).abs().mean((1, 2, 3)).min()) > 1e-3  # two seeds, two pictures
    assert torch.allclose(p.utility_1, preference_utility(p.images_1, p.captions))
    assert set(p.label_0.tolist()) <= {0.0, 0.5, 1.0}
