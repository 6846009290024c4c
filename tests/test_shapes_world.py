"""ShapesWorld's world: captions, renderer, ground truth, preference labels, report helpers, tokenizer."""
import dataclasses
import math

import pytest
import torch

from trainer.scoring import Scorer
from trainer.shapes import (
    AestheticScore, AlignmentScore, CombinedScore, aesthetic, alignment, heldout_captions, image_grid, mean_ci95,
    parse_caption, preference_label, render, train_captions,
)
from trainer.shapes.render import DEGRADATIONS
from trainer.shapes.truth import aesthetic_terms
from trainer.shapes.world import COLOURS, HELDOUT_TRIPLES, POSITIONS, SHAPES

CAPTIONS = train_captions()[::35]  # 31 captions spread over shapes, colours, positions and sizes


def _render(scenes, quality=1.0, seed=0, strengths=None):
    q = torch.full((len(scenes),), float(quality))
    return render(scenes, q, torch.Generator().manual_seed(seed), strengths=strengths)


def test_captions_parse_round_trip_and_split():
    train, held = train_captions(), heldout_captions()
    assert len(train) == 1080 and len(held) == 16
    for c in train + held:
        assert parse_caption(c).caption == c
    train_triples = {parse_caption(c).triple for c in train}
    assert not train_triples & set(HELDOUT_TRIPLES)
    assert {parse_caption(c).triple for c in held} == set(HELDOUT_TRIPLES)
    scene = parse_caption("A red triangle on a blue background, top left.")
    assert (scene.shape, scene.colour, scene.background, scene.position, scene.size) == ("triangle", "red", "blue", "top left", None)


@pytest.mark.parametrize("caption, word", [
    ("a red cat on a blue background, top left", "'cat'"),
    ("a large orange circle on a blue background, center", "'orange'"),
    ("a red circle on a blue background, middle", "'middle'"),
])
def test_unknown_word_is_named(caption, word):
    with pytest.raises(ValueError, match=word):
        parse_caption(caption)


def test_bad_grammar_and_same_colours_are_rejected():
    with pytest.raises(ValueError, match="form"):
        parse_caption("red a circle on a blue background, center")
    with pytest.raises(ValueError, match="differ"):
        parse_caption("a red circle on a red background, center")


def test_render_is_deterministic_and_in_range():
    scenes = [parse_caption(c) for c in CAPTIONS[:6]]
    q = torch.linspace(0, 1, 6)
    a = render(scenes, q, torch.Generator().manual_seed(3))
    b = render(scenes, q, torch.Generator().manual_seed(3))
    assert a.shape == (6, 3, 64, 64) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


def test_clean_render_has_exact_colours():
    scene = parse_caption("a large red square on a blue background, center")
    x = (_render([scene])[0] + 1) / 2
    assert torch.allclose(x[:, 32, 32], torch.tensor(COLOURS["red"]), atol=1e-5)
    assert torch.allclose(x[:, 2, 2], torch.tensor(COLOURS["blue"]), atol=1e-5)


def test_aesthetic_ranks_quality_levels_in_order():
    scenes = [parse_caption(c) for c in CAPTIONS]
    means = [float(aesthetic(_render(scenes, q, seed=1)).mean()) for q in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert means[0] > 9.3 and means[-1] < 7.0


@pytest.mark.parametrize("k, term", list(enumerate(["sharpness", "jaggies", "saturation", "smudge", "noise"])))
def test_each_degradation_lowers_its_own_term(k, term):
    scenes = [parse_caption(c) for c in CAPTIONS[:12]]
    s = torch.zeros(len(scenes), len(DEGRADATIONS))
    clean = aesthetic_terms(_render(scenes, strengths=s))
    s[:, k] = 1.0
    bad = aesthetic_terms(_render(scenes, strengths=s))
    assert float(getattr(bad, term).mean()) < float(getattr(clean, term).mean()) - 0.4
    assert float(bad.total().mean()) < float(clean.total().mean()) - 0.8


def test_saturation_is_the_same_for_every_colour_and_falls_with_washout():
    # A caption-blind aesthetic must not like one hue better: else turning a purple shape blue
    # would be an "improvement" for a preference model to learn and a LoRA to exploit.
    scenes = [parse_caption(f"a large {fg} square on a {bg} background, center")
              for fg in COLOURS for bg in COLOURS if fg != bg]
    for wash in (0.0, 0.25, 0.5):
        s = torch.zeros(len(scenes), len(DEGRADATIONS))
        s[:, DEGRADATIONS.index("washout")] = wash
        sat = aesthetic_terms(_render(scenes, strengths=s)).saturation
        assert float(sat.max() - sat.min()) < 0.02, (wash, sat)
        assert abs(float(sat.mean()) - min(1.0, (1 - 0.8 * wash - 0.2) / 0.75)) < 0.02, (wash, sat)


def _swap(scene, **changes):
    return dataclasses.replace(scene, **changes)


def test_alignment_is_high_for_right_and_low_for_wrong_renderings():
    scenes = [parse_caption(c) for c in CAPTIONS]
    assert float(alignment(_render(scenes), CAPTIONS).min()) > 0.9
    other = lambda s: [c for c in COLOURS if c not in (s.colour, s.background)][0]
    wrong = {
        "colour": [_swap(s, colour=other(s)) for s in scenes],
        "background": [_swap(s, background=other(s)) for s in scenes],
        "shape": [_swap(s, shape=SHAPES[(SHAPES.index(s.shape) + 1) % 4]) for s in scenes],
        "position": [_swap(s, position=list(POSITIONS)[(list(POSITIONS).index(s.position) + 1) % 5]) for s in scenes],
    }
    for name, bad in wrong.items():
        assert float(alignment(_render(bad), CAPTIONS).max()) < 0.3, name


def test_preference_label_prefers_clean_and_ties_identical():
    scenes = [parse_caption(c) for c in CAPTIONS]
    clean, ruined = _render(scenes, 1.0), _render(scenes, 0.0)
    g = torch.Generator().manual_seed(0)
    label = preference_label(clean, ruined, CAPTIONS, g)
    assert set(label.tolist()) <= {0.0, 0.5, 1.0}
    assert float((label == 1).float().mean()) > 0.8
    assert torch.all(preference_label(clean, clean, CAPTIONS, g) == 0.5)


def test_scorers_fit_the_project_signature():
    scenes = [parse_caption(c) for c in CAPTIONS[:4]]
    x = _render(scenes, 0.5)
    t = torch.zeros(4, dtype=torch.long)
    for scorer, ref in ((AestheticScore(), aesthetic(x)), (AlignmentScore(), alignment(x, CAPTIONS[:4])),
                        (CombinedScore(), 0.6 * aesthetic(x) / 10 + 0.4 * alignment(x, CAPTIONS[:4]))):
        assert isinstance(scorer, Scorer)
        assert torch.allclose(scorer.score(x, CAPTIONS[:4], t), ref)


def test_mean_ci95_matches_hand_computed_t_interval():
    mean, lo, hi = mean_ci95([1.0, 2.0, 3.0, 4.0])
    half = 3.182 * math.sqrt(5 / 3) / 2  # t(0.975, df=3) · s / √n
    assert mean == 2.5 and lo == pytest.approx(2.5 - half) and hi == pytest.approx(2.5 + half)
    assert mean_ci95([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_image_grid_places_tiles():
    red = torch.zeros(2, 3, 64, 64)
    red[:, 0] = 1
    red[:, 1:] = -1
    grid = image_grid([red, -torch.ones(1, 3, 64, 64)], scale=1)
    assert grid.size == (128, 128)
    assert grid.getpixel((70, 10)) == (255, 0, 0) and grid.getpixel((10, 70)) == (0, 0, 0)
    assert grid.getpixel((70, 70)) == (255, 255, 255)  # missing tile stays background


def test_tokenizer_loads_with_clip_tokenizer_and_words_are_single_tokens(tmp_path):
    from transformers import CLIPTokenizer

    from trainer.shapes.architectures import token_ids
    from trainer.shapes.tokenizer import write_tokenizer
    from trainer.shapes.world import vocabulary_words

    write_tokenizer(tmp_path, max_length=16)
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    vocab_size, bos, eos = token_ids()
    assert len(tok) == vocab_size and tok.bos_token_id == bos and tok.eos_token_id == eos
    for word in vocabulary_words():
        assert len(tok(word).input_ids) == 3, word
    assert max(len(tok(c).input_ids) for c in train_captions()) <= 16
    ids = tok("a photo of a cat").input_ids  # outside the world still tokenizes, by bytes
    assert ids[0] == bos and ids[-1] == eos and tok.decode(ids[1:-1]) == "a photo of a cat"


def test_swap_attribute_changes_exactly_that_attribute():
    import random

    from trainer.shapes.evaluate import swap_attribute

    rng = random.Random(0)
    for caption in train_captions()[::37]:
        s = parse_caption(caption)
        for attribute in ("shape", "colour", "position"):
            t = parse_caption(swap_attribute(caption, attribute, rng))
            changed = {f for f in ("shape", "colour", "background", "position", "size") if getattr(s, f) != getattr(t, f)}
            assert changed == {attribute}
    with pytest.raises(ValueError, match="unknown attribute 'size'"):
        swap_attribute(train_captions()[0], "size", rng)
