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
    import enum
    import types

    class CacheType(enum.Enum):
        CLASSIC = 0

    class Before08:  # ComfyUI 0.3.x
        def __init__(self, server, cache_type=False, cache_size=None):
            pass

    class Since08:  # 0.8 reads cache_args["ram"]; 0.28 also cache_args["ram_inactive"] in execute()
        def __init__(self, server, cache_type=False, cache_args=None):
            pass

    def options(executor):
        return driver._executor_options(types.SimpleNamespace(PromptExecutor=executor, CacheType=CacheType))

    assert options(Before08) == {"cache_type": CacheType.CLASSIC, "cache_size": None}
    assert options(Since08) == {"cache_type": CacheType.CLASSIC, "cache_args": {"lru": 0, "ram": 0, "ram_inactive": 0}}


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


_STAND_IN_SCRIPT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("d", sys.argv[1])
d = importlib.util.module_from_spec(spec)
spec.loader.exec_module(d)
installed = {}
for n in ("torchvision", "torchaudio"):  # installed and loading with this torch
    try:
        __import__(n)
        installed[n] = True
    except Exception:
        installed[n] = False
d._stub_absent_media_packages()
import torchaudio.functional, torchaudio.transforms, torchvision.transforms.functional  # what ComfyUI imports
from torchvision.ops import roi_align
for name, used in (("torchaudio", torchaudio.functional.resample), ("torchvision", roi_align)):
    stand_in = sys.modules[name].__spec__.origin is None
    try:
        used(1)
        raised = False
    except RuntimeError as e:
        raised = "not installed here" in str(e)
    print(f"{name}:{int(installed[name])}:{int(stand_in)}:{int(raised)}")
"""


def test_absent_media_packages_get_stand_ins_that_fail_only_when_used():
    """ComfyUI imports torchvision and torchaudio at start-up; the driver stands in only for what is absent."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _STAND_IN_SCRIPT, str(Path(__file__).with_name("test_comfy_integration.py"))],
                         capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == 2, out
    for row in out:
        name, installed, stand_in, raised = row.split(":")
        if installed == "1":
            assert stand_in == "0", row  # a package that is there is used as it is
        else:
            assert stand_in == "1" and raised == "1", row  # importable, and an error that says so when used
