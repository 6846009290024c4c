"""The real-ComfyUI driver's version shims (tests/test_comfy_integration.py), without ComfyUI."""
import asyncio
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("comfy_driver", Path(__file__).with_name("test_comfy_integration.py"))
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)


def test_the_temporary_checkpoint_is_read_as_safetensors():
    tmp = driver._partial_name("/cache/checkpoints/sd15-random.safetensors")
    assert tmp == "/cache/checkpoints/sd15-random.partial.safetensors"
    assert tmp.lower().endswith(".safetensors")  # what ComfyUI's load_torch_file tests


def test_executor_options_are_passed_only_where_they_exist():
    class Before08:  # ComfyUI 0.3.x
        def __init__(self, server, cache_type=False, cache_size=None):
            pass

    class Since08:
        def __init__(self, server, cache_args=None):
            pass

    args = {"cache_args": {"lru": 0, "ram": 0}}
    assert driver._supported(Before08, **args) == {}
    assert driver._supported(Since08, **args) == args


def test_prompt_validation_across_signatures():
    seen = []

    class One:
        @staticmethod
        def validate_prompt(prompt):
            seen.append((prompt,))
            return (True, None, ["9"], {})

    class Three:
        @staticmethod
        async def validate_prompt(prompt_id, prompt, partial_execution_list):
            seen.append((prompt_id, prompt, partial_execution_list))
            return (True, None, ["9"], {})

    assert driver._validate(One, "id", {"9": {}})[2] == ["9"]
    assert driver._validate(Three, "id", {"9": {}})[2] == ["9"]
    assert seen == [({"9": {}},), ("id", {"9": {}}, None)]
    assert not asyncio.iscoroutine(driver._validate(Three, "id", {}))
