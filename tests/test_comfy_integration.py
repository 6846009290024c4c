"""The node pack inside a real ComfyUI checkout, through ComfyUI's own loader and executor.

Skipped unless SPO_COMFYUI_DIR names a ComfyUI checkout. ComfyUI runs in a subprocess (it
parses argv and mutates global state on import): SPO_COMFYUI_PYTHON picks its interpreter
(default: this one). Built once and cached in SPO_COMFYUI_CACHE (default: a pytest temp dir):
a random-weight SD-1.5 single-file checkpoint (real architecture, so ComfyUI detects SD15;
~2 GB), an SPO-release-layout LoRA for it, and the SPM: the shipped ShapesWorld SPM
(trainer/shapes/weights/spm) when present, else a small random one. CPU only, 64×64 images, few steps.

    SPO_COMFYUI_DIR=/path/to/ComfyUI SPO_COMFYUI_PYTHON=/path/to/venv/bin/python \
        python -m pytest tests/test_comfy_integration.py -q

This file is also the driver that runs inside ComfyUI: `python test_comfy_integration.py SPEC.json`.
It is meant for every ComfyUI `pyproject.toml` admits (requires-comfyui, 0.3.40 on): where
ComfyUI's own signatures changed (executor caching, prompt validation, node init), it passes
only what the running version accepts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "comfyui"
CKPT = "sd15-random.safetensors"
LORA = "spo-random_lora_diffusers.safetensors"
LORA_SDXL = "sdxl-random_lora_kohya.safetensors"
STEPS, SIZE = 4, 64


# ====================================================================== the driver (inside ComfyUI)


class _AbsentMeta(type):
    """What a stand-in module hands out: importable, subclassable, and an error only when used."""

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"{cls.__qualname__}: not installed here (a stand-in of the ComfyUI test driver)")

    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _AbsentMeta(f"{cls.__qualname__}.{attr}", (), {"__qualname__": f"{cls.__qualname__}.{attr}"})


class _AbsentFinder:
    """Imports of `name` and any `name.sub.module` get stand-in modules (a meta-path finder)."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        import importlib.machinery

        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        import types

        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: getattr(_AbsentMeta(spec.name, (), {"__qualname__": spec.name}), attr)
        return module

    def exec_module(self, module):
        pass


def _stub_absent_media_packages() -> None:
    """torchvision and torchaudio stand-ins where no wheel for the installed CPU torch loads.

    SD-1.5 runs never call into them, but ComfyUI imports them at start-up (more of them with each
    release: torchaudio at module level and torchvision.ops in model_base by 0.28). A package that
    loads is used as it is. transformers is imported first, so that it records them as absent (it
    checks once).
    """
    import transformers  # noqa: F401

    absent = []
    for name in ("torchvision", "torchaudio"):
        try:
            __import__(name)
        except Exception:
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]  # a half-loaded package (a wheel built for another torch)
            absent.append(name)
    if absent:
        sys.meta_path.insert(0, _AbsentFinder(absent))


def _run(value):
    import asyncio
    import inspect

    return asyncio.run(value) if inspect.isawaitable(value) else value


def _supported(fn, **kwargs) -> dict:
    """The keyword arguments `fn` accepts in this ComfyUI version (others are newer options left out)."""
    import inspect

    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _executor_options(execution) -> dict:
    """PromptExecutor's options as main.py builds them for `--cache-classic` (outputs dropped as soon as
    they are used, so no job is served from another's cache), in the running version's terms: 0.3.x
    takes cache_size; 0.8 cache_args with "lru" and "ram"; by 0.28 execute() also reads "ram_inactive"."""
    return _supported(execution.PromptExecutor, cache_type=execution.CacheType.CLASSIC, cache_size=None,
                      cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})


def _validate(execution, prompt_id: str, prompt: dict):
    """execution.validate_prompt across versions: (prompt), (id, prompt), (id, prompt, partial list); sync or async."""
    import inspect

    n = len(inspect.signature(execution.validate_prompt).parameters)
    args = {1: (prompt,), 2: (prompt_id, prompt)}.get(n, (prompt_id, prompt, None))
    return _run(execution.validate_prompt(*args))


def _boot_comfy(spec: dict):
    comfy_dir = spec["comfy_dir"]
    os.chdir(comfy_dir)
    sys.path.insert(0, comfy_dir)
    _stub_absent_media_packages()
    out = spec["work"]
    for d in ("output", "temp", "user"):
        os.makedirs(f"{out}/{d}", exist_ok=True)
    sys.argv = ["main.py", "--cpu", "--output-directory", f"{out}/output", "--temp-directory", f"{out}/temp",
                "--user-directory", f"{out}/user"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401  (parses the argv above, as main.py does)
    import utils.extra_config  # noqa: F401  (main.py imports it before nodes, which puts comfy/ on sys.path)
    import folder_paths
    import nodes

    return folder_paths, nodes


def _partial_name(checkpoint: str) -> str:
    """Where the checkpoint is written before its atomic rename. ComfyUI's load_torch_file picks the
    safetensors reader by the name's ending (torch.load otherwise), so the name keeps `.safetensors`."""
    stem, ext = os.path.splitext(checkpoint)
    return f"{stem}.partial{ext}"


def _convert_checkpoint(spec: dict) -> dict:
    """Random diffusers SD-1.5 components -> ComfyUI's single-file checkpoint (its own converter)."""
    import torch

    _boot_comfy(spec)
    import comfy.diffusers_load
    import comfy.sd
    import comfy.utils

    unet, clip, vae = comfy.diffusers_load.load_diffusers(spec["diffusers_dir"])
    tmp = _partial_name(spec["checkpoint"])
    comfy.sd.save_checkpoint(tmp, unet, clip, vae)
    sd = comfy.utils.load_torch_file(tmp)
    comfy.utils.save_torch_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in sd.items()}, tmp)
    os.replace(tmp, spec["checkpoint"])
    return {"model_config": type(unet.model.model_config).__name__}


class _Server:
    """What PromptExecutor needs from PromptServer: a client id and a message sink."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


def _run_workflows(spec: dict) -> dict:
    import uuid

    folder_paths, nodes = _boot_comfy(spec)
    import comfy.model_base
    import execution
    from PIL import Image

    _run(nodes.init_extra_nodes(**_supported(nodes.init_extra_nodes, init_custom_nodes=False, init_api_nodes=False)))
    loaded = _run(nodes.load_custom_node(spec["pack"]))
    for folder, path in spec["folders"].items():
        folder_paths.add_model_folder_path(folder, path)
    result = {"pack_loaded": bool(loaded), "node_types": sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("SPO")),
              "display": {k: v for k, v in nodes.NODE_DISPLAY_NAME_MAPPINGS.items() if k.startswith("SPO")},
              "spm_files": folder_paths.get_filename_list("spo"), "jobs": {}}

    sys.path.insert(0, spec["examples"])
    from ui_format import node_info_of

    used = {n["class_type"] for job in spec["jobs"].values() for n in job.values()}
    result["object_info"] = {c: node_info_of(nodes.NODE_CLASS_MAPPINGS[c]) for c in sorted(used)}
    rows: list[int] = []
    apply_model = comfy.model_base.BaseModel.apply_model

    def counting_apply_model(self, x, *args, **kwargs):
        rows.append(int(x.shape[0]))
        return apply_model(self, x, *args, **kwargs)

    comfy.model_base.BaseModel.apply_model = counting_apply_model
    server = _Server()
    executor = execution.PromptExecutor(server, **_executor_options(execution))
    for name, prompt in spec["jobs"].items():
        rows.clear()
        pid = str(uuid.uuid4())
        valid = _validate(execution, pid, prompt)
        job = {"valid": bool(valid[0])}
        if not valid[0]:
            job["error"] = valid[1]
            job["node_errors"] = valid[3]
            result["jobs"][name] = job
            continue
        executor.execute(prompt, pid, {}, valid[2])
        job["success"] = bool(executor.success)
        job["errors"] = [d.get("exception_message", "") for e, d in executor.status_messages if e == "execution_error"]
        job["outputs"] = executor.history_result.get("outputs", {})
        job["model_rows"] = list(rows)
        job["images"] = {}
        for node_id, out in job["outputs"].items():
            for img in out.get("images", []):
                base = folder_paths.get_output_directory() if img.get("type") == "output" else folder_paths.get_temp_directory()
                with Image.open(os.path.join(base, img.get("subfolder", ""), img["filename"])) as im:
                    job["images"].setdefault(node_id, []).append(list(im.size))
        result["jobs"][name] = job
    return result


def driver_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = _convert_checkpoint(spec) if spec["task"] == "convert" else _run_workflows(spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    driver_main(sys.argv[1])
    sys.exit(0)


# ====================================================================== the tests (pytest side)

import pytest  # noqa: E402
import torch  # noqa: E402

COMFY_DIR = os.environ.get("SPO_COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFY_DIR, reason="set SPO_COMFYUI_DIR to a ComfyUI checkout to run")


def _drive(spec: dict, work: Path, timeout: int = 1800) -> dict:
    spec = {**spec, "comfy_dir": str(Path(COMFY_DIR).resolve()), "work": str(work), "result": str(work / f"{spec['task']}.json")}
    path = work / f"{spec['task']}-spec.json"
    path.write_text(json.dumps(spec))
    python = os.environ.get("SPO_COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([python, __file__, str(path)], cwd=COMFY_DIR, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(Path(spec["result"]).read_text())


def _sd15_unet_attention_modules() -> list[str]:
    from diffusers import UNet2DConditionModel

    from trainer.configs import load_component_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_component_config("sd15", "unet"))
    suffixes = (".to_q", ".to_k", ".to_v", ".to_out.0")
    return [n for n, _ in unet.named_modules() if ".attn" in n and n.endswith(suffixes)]


def _write_random_lora(path: Path, modules: list[str], rank: int = 4) -> None:
    """An SD-1.5 LoRA in the official SPO release layout: unet.<module>.lora.{down,up}.weight."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from trainer.configs import load_component_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_component_config("sd15", "unet"))
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name in modules:
        layer = unet.get_submodule(name)
        sd[f"unet.{name}.lora.down.weight"] = torch.randn(rank, layer.in_features, generator=g) * 0.01
        sd[f"unet.{name}.lora.up.weight"] = torch.randn(layer.out_features, rank, generator=g) * 0.01
    save_file(sd, str(path))


def _write_sdxl_kohya_lora(path: Path) -> None:
    """A two-module SDXL-only kohya LoRA (LDM names), for the wrong-family check."""
    from safetensors.torch import save_file

    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 640), f"{name}.lora_up.weight": torch.zeros(640, 4),
               f"{name}.alpha": torch.tensor(4.0)}, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})


def _write_tiny_spm(out: Path) -> None:
    """A small step-aware SPM in spo-studio's folder format, with ComfyUI's CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from trainer.spm.weights import save_pretrained, spm_from_clip

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    spm = spm_from_clip(CLIPModel(cfg), step_aware=True, family="sd15")
    with torch.no_grad():  # make t matter: perturb the identity-initialised adaLN a little
        for n, p in spm.named_parameters():
            if "adaLN" in n or "t_embedder" in n:
                p.add_(torch.randn_like(p) * 0.02)
    spm.tokenizer = CLIPTokenizer.from_pretrained(str(Path(COMFY_DIR) / "comfy" / "sd1_tokenizer"))
    save_pretrained(spm, out)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    cache = Path(os.environ.get("SPO_COMFYUI_CACHE") or tmp_path_factory.mktemp("comfy-cache"))
    for d in ("checkpoints", "loras", "spo", "diffusers"):
        (cache / d).mkdir(parents=True, exist_ok=True)
    ckpt = cache / "checkpoints" / CKPT
    if not ckpt.is_file():
        _build_random_sd15_diffusers(cache / "diffusers" / "sd15-random")
        _drive({"task": "convert", "diffusers_dir": str(cache / "diffusers" / "sd15-random"), "checkpoint": str(ckpt)},
               tmp_path_factory.mktemp("convert"))
    modules = _sd15_unet_attention_modules()
    if not (cache / "loras" / LORA).is_file():
        _write_random_lora(cache / "loras" / LORA, modules)
    _write_sdxl_kohya_lora(cache / "loras" / LORA_SDXL)
    shipped = REPO / "trainer" / "shapes" / "weights" / "spm"
    if (shipped / "config.json").is_file():  # the ShapesWorld SPM, once it is shipped
        spm_name = "shapesworld-spm"
        link = cache / "spo" / spm_name
        if link.is_symlink() and not link.exists():
            link.unlink()
        if not link.exists():
            link.symlink_to(shipped, target_is_directory=True)
    else:
        spm_name = "tiny-spm"
        if not (cache / "spo" / spm_name / "config.json").is_file():
            _write_tiny_spm(cache / "spo" / spm_name)
    (cache / "spo" / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    return {"cache": cache, "lora_modules": len(modules), "spm": f"{spm_name}/model.safetensors"}


def _build_random_sd15_diffusers(out: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from trainer.configs import config_dir, load_component_config

    torch.manual_seed(0)
    UNet2DConditionModel.from_config(load_component_config("sd15", "unet")).to(torch.float16).save_pretrained(out / "unet")
    AutoencoderKL.from_config(load_component_config("sd15", "vae")).to(torch.float16).save_pretrained(out / "vae")
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config_dir("sd15") / "text_encoder"))).to(torch.float16)
    te.save_pretrained(out / "text_encoder")
    # transformers 5 saves CLIPTextModel without the "text_model." level ComfyUI (and every SD file) uses
    p = out / "text_encoder" / "model.safetensors"
    sd = load_file(str(p))
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}, str(p))


def _example(name: str, spm: str, **replace) -> dict:
    """An example workflow (API format) at test size, with this run's file names."""
    wf = json.loads((EXAMPLES / f"{name}.api.json").read_text())
    for node in wf.values():
        inputs = node["inputs"]
        for key, value in {"ckpt_name": CKPT, "lora_name": LORA, "spm_name": spm,
                           "width": SIZE, "height": SIZE, "steps": STEPS, **replace}.items():
            if key in inputs:
                inputs[key] = value
    return wf


@pytest.fixture(scope="module")
def comfy_run(assets, tmp_path_factory) -> dict:
    cache = assets["cache"]
    work = tmp_path_factory.mktemp("comfy-run")
    (work / "custom_nodes").mkdir()
    pack = work / "custom_nodes" / "spo-studio"
    pack.symlink_to(REPO, target_is_directory=True)
    spm = assets["spm"]
    jobs = {
        "lora": _example("spo_lora_ksampler", spm),
        "best_of_4": _example("best_of_4_stepaware", spm),
        "spo_sampler": _example("spo_sampler_samplercustom", spm, k=2, window_start=0.25, window_end=1.0,
                                strategy="greedy", judge_every=1),
        "spo_sampler_fk": _example("spo_sampler_samplercustom", spm, k=2),  # the example's fk settings
        "bad_sdxl_lora": _example("spo_lora_ksampler", spm, lora_name=LORA_SDXL),
        "bad_spm": _example("best_of_4_stepaware", spm, spm_name="corrupt.safetensors"),
        "bad_k": _example("spo_sampler_samplercustom", spm, k=1),
        "bad_prompt": _example("spo_sampler_samplercustom", spm, prompt="  "),
        "after_errors": _example("spo_lora_ksampler", spm, seed=7),
    }
    spec = {"task": "run", "pack": str(pack), "jobs": jobs, "examples": str(EXAMPLES),
            "folders": {"checkpoints": str(cache / "checkpoints"), "loras": str(cache / "loras"), "spo": str(cache / "spo")}}
    return _drive(spec, work)


def test_ui_workflows_match_their_api_twins_under_the_real_node_definitions(comfy_run):
    sys.path.insert(0, str(EXAMPLES))
    from ui_format import ui_to_api

    names = sorted(p.name[: -len(".api.json")] for p in EXAMPLES.glob("*.api.json"))
    assert names == ["best_of_4_stepaware", "spo_lora_ksampler", "spo_sampler_samplercustom"]
    for name in names:
        api = json.loads((EXAMPLES / f"{name}.api.json").read_text())
        ui = json.loads((EXAMPLES / f"{name}.json").read_text())
        got = ui_to_api(ui, comfy_run["object_info"])
        assert {k: (v["class_type"], v["inputs"]) for k, v in got.items()} == \
               {k: (v["class_type"], v["inputs"]) for k, v in api.items()}, name


def test_pack_loads_the_way_comfyui_loads_it(comfy_run, assets):
    assert comfy_run["pack_loaded"]
    assert comfy_run["node_types"] == ["SPOLoadSPM", "SPOLoadScorer", "SPOLoraLoader", "SPOSampler", "SPOStepAwareScore"]
    assert assets["spm"] in comfy_run["spm_files"]


def test_spo_lora_ksampler_workflow_applies_every_lora_key(comfy_run, assets):
    job = comfy_run["jobs"]["lora"]
    assert job["success"], job
    report = "".join(job["outputs"]["11"]["text"])
    n = assets["lora_modules"]
    assert f"{n}/{n} modules applied" in report and "0 not applied" in report, report
    assert job["images"]["9"] == [[SIZE, SIZE]]


def test_best_of_4_workflow_sorts_by_score(comfy_run):
    job = comfy_run["jobs"]["best_of_4"]
    assert job["success"], job
    text = "".join(job["outputs"]["13"]["text"])
    scores = [float(line.rsplit("score", 1)[1]) for line in text.splitlines()]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert len(set(scores)) > 1  # a real ranking, not a constant
    assert job["images"]["9"] == [[SIZE, SIZE]]  # top 1
    assert job["images"]["14"] == [[SIZE, SIZE]] * 4


def test_spo_sampler_workflow_costs_exactly_n_plus_k_minus_1_times_w_evaluations(comfy_run):
    from trainer.spo.guided_sampler import expected_model_evals

    job = comfy_run["jobs"]["spo_sampler"]
    assert job["success"], job
    # ddim_uniform sigmas end at 0: of 4 steps, window [0.25, 1) branches steps 1 and 2 (step 3 goes to σ = 0)
    # CFG batches cond + uncond into one UNet call, so every row count is 2 × (samples in the call)
    assert sum(job["model_rows"]) == 2 * expected_model_evals(STEPS, 2, k=2) == 2 * 6
    assert sorted(set(job["model_rows"])) == [2, 4]
    assert job["images"]["9"] == [[SIZE, SIZE]]


def test_spo_sampler_fk_workflow_costs_what_strategy_cost_says(comfy_run):
    import torch

    from trainer.spo.strategies import StrategyConfig, strategy_cost

    job = comfy_run["jobs"]["spo_sampler_fk"]
    assert job["success"], job
    # the example's fk settings (window 0.4-0.7, every 4) on 4 steps resample at step 2; the first step's
    # model call is shared by the particles: 1 + k·(n − 1) evaluations, each a cond + uncond row pair
    config = StrategyConfig(name="fk", k=2, window=(0.4, 0.7), every=4)
    cost = strategy_cost(config, torch.linspace(1.0, 0.0, STEPS + 1))
    assert sum(job["model_rows"]) == 2 * cost.model_evals == 2 * (1 + 2 * (STEPS - 1))
    assert job["images"]["9"] == [[SIZE, SIZE]]


@pytest.mark.parametrize("name,needle", [
    ("bad_sdxl_lora", "was made for SDXL but the model is SD-1.5"),
    ("bad_spm", "Load SPM (corrupt.safetensors)"),
    ("bad_prompt", "prompt is empty"),
])
def test_bad_input_is_one_line_on_the_node(comfy_run, name, needle):
    job = comfy_run["jobs"][name]
    assert job["valid"] and not job["success"]
    (message,) = job["errors"]
    assert needle in message and "\n" not in message.strip(), message


def test_k_below_two_is_refused_by_validation(comfy_run):
    job = comfy_run["jobs"]["bad_k"]
    assert not job["valid"]
    assert "k" in json.dumps(job["node_errors"])


def test_comfyui_keeps_working_after_errors(comfy_run):
    assert comfy_run["jobs"]["after_errors"]["success"]
