"""WebUI prompt markup is removed before the SPM tokenizes a prompt."""
import pytest

from webui_extension.prompt_text import plain_prompt


@pytest.mark.parametrize(
    "prompt, plain",
    [
        ("plain prompt", "plain prompt"),
        ("masterpiece, (best quality:1.2), ((red)) car <lora:spo:0.8>, [blurry]", "masterpiece, best quality, red car, blurry"),
        ("a [cat:dog:0.5] on a [snowy:0.3] hill BREAK sunset", "a dog on a snowy hill, sunset"),
        (r"a \(literal\) [cat|dog|fox] photo", "a (literal) cat photo"),
        ("(a:1.2), , <lora:x:1>, b", "a, b"),
        ("[[a:b:0.2]:c:0.6] tree", "c tree"),
        ("(negative weight:-0.5) ok", "negative weight ok"),
        ("<lora:only:1>", ""),
    ],
)
def test_plain_prompt(prompt, plain):
    assert plain_prompt(prompt) == plain
