"""The extension inside a real AUTOMATIC1111 WebUI (or Forge) checkout, through its own launcher and HTTP API.

Skipped unless SPO_WEBUI_DIR names a WebUI checkout whose `repositories/` are in place
(README, "AUTOMATIC1111 WebUI"). SPO_WEBUI_PYTHON is the WebUI's own venv Python (default:
this one); SPO_WEBUI_ARGS adds launcher options (Forge on CPU: "--always-cpu --all-in-fp32"). Built once and cached in SPO_WEBUI_CACHE (default: a pytest temp dir), all offline:
an openai/clip-vit-large-patch14 config and tokenizer in a private Hugging Face cache (the
tokenizer made from the BPE file the WebUI's own open-clip-torch ships), a random-weight SD-1.5
single-file checkpoint instantiated from the WebUI's own v1-inference.yaml (~2 GB), and a
random SD-1.5 LoRA in kohya form written by `python -m trainer.lora convert`. The shipped
ShapesWorld SPM is copied into models/spo/. CPU only, 64×64 images, few steps.

    SPO_WEBUI_DIR=/path/to/stable-diffusion-webui SPO_WEBUI_PYTHON=/path/to/venv/bin/python \\
        python -m pytest tests/test_webui_integration.py -q

The WebUI runs with `--data-dir` pointing at a temporary folder: the repository is linked into
its extensions/ (as "Install from URL" lays it out), with a small probe extension that reports
the Lora extension's loaded networks and runs the SPO Scorer tab's function in the server.
`install.py` is run the way the launcher runs it, and must leave `pip freeze` unchanged.

This file is also the driver that runs inside the WebUI's Python: `python test_webui_integration.py SPEC.json`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CKPT = "sd15-random.safetensors"
LORA = "spo-random"
SIZE, STEPS = 64, 4
CLIP_ID = "openai/clip-vit-large-patch14"


# ====================================================================== the driver (inside the WebUI's Python)


def _write_clip_tokenizer(dst: Path) -> None:
    """CLIP's tokenizer files from open_clip's BPE list (the same 49408 tokens as openai's vocab.json)."""
    import gzip

    import open_clip.tokenizer as oct

    lines = gzip.open(oct.default_bpe(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    vocab = list(oct.bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (dst / "special_tokens_map.json").write_text(json.dumps(special))
    (dst / "tokenizer_config.json").write_text(json.dumps({**special, "model_max_length": 77, "do_lower_case": True,
                                                           "errors": "replace", "tokenizer_class": "CLIPTokenizer"}))


def _prepare(spec: dict) -> dict:
    """The offline Hugging Face cache entry for CLIP-L and a random SD-1.5 checkpoint."""
    import shutil

    import torch

    snapshot = Path(os.environ["HF_HOME"]) / "hub" / "models--openai--clip-vit-large-patch14"
    files = snapshot / "snapshots" / ("0" * 40)
    _write_clip_tokenizer(files)
    shutil.copyfile(spec["text_config"], files / "config.json")
    (snapshot / "refs").mkdir(exist_ok=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    result = {}
    ckpt = Path(spec["checkpoint"])
    if not ckpt.is_file():
        sys.path[:0] = [spec["webui_dir"], str(Path(spec["webui_dir"]) / "repositories" / "stable-diffusion-stability-ai")]
        import ldm.modules.encoders.modules as encoders
        from ldm.util import instantiate_from_config
        from omegaconf import OmegaConf
        from safetensors.torch import save_file
        from transformers import CLIPTextConfig, CLIPTextModel

        # FrozenCLIPEmbedder loads CLIP-L's weights from the hub: a random one from the cached config instead
        encoders.CLIPTextModel.from_pretrained = staticmethod(lambda name, **kw: CLIPTextModel(CLIPTextConfig.from_pretrained(name)))
        torch.manual_seed(0)
        config = OmegaConf.load(str(Path(spec["webui_dir"]) / "configs" / "v1-inference.yaml"))
        model = instantiate_from_config(config.model)
        sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
        tmp = ckpt.with_name(ckpt.name + ".partial.safetensors")
        save_file(sd, str(tmp))
        os.replace(tmp, ckpt)
        result["keys"] = len(sd)
    return result


def _freeze(python: str) -> list[str]:
    out = subprocess.run([python, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True)
    return sorted(out.stdout.splitlines())


def _install(spec: dict) -> dict:
    """install.py run by the WebUI's own launcher function, and pip freeze around it."""
    os.chdir(spec["webui_dir"])
    sys.path.insert(0, spec["webui_dir"])
    sys.argv = sys.argv[:1]
    before = _freeze(sys.executable)
    from modules import launch_utils

    launch_utils.run_extension_installer(spec["extension_dir"])
    after = _freeze(sys.executable)
    return {"before": before, "after": after}


def driver_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = {"prepare": _prepare, "install": _install}[spec["task"]](spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    driver_main(sys.argv[1])
    sys.exit(0)


# ====================================================================== the probe extension (inside the server)

PROBE = '''
"""Test probe: what the Lora extension loaded, and the SPO Scorer tab's function, over HTTP."""
import sys

from modules import script_callbacks


def _routes(demo, app):
    @app.get("/spo-probe/networks")
    def networks():
        loaded = getattr(sys.modules.get("networks"), "loaded_networks", [])
        return {net.name: len(net.modules) for net in loaded}

    def extension_module(suffix):  # whatever package name the entry script loaded the extension under
        return next(m for n, m in list(sys.modules.items()) if n.endswith("." + suffix) and m is not None
                    and hasattr(m, {"script": "load_spm_by_name", "scorer_tab": "score_uploads"}[suffix]))

    @app.post("/spo-probe/score")
    def score(body: dict):
        script = extension_module("script")
        tab = extension_module("scorer_tab")
        load = lambda name: script.load_spm_by_name(name).model
        gallery, rows, message = tab.score_uploads(body["paths"], body["prompt"], body["spm"], 0, load)
        return {"rows": rows, "message": message}


script_callbacks.on_app_started(_routes)
'''


# ====================================================================== the tests (pytest side)

import pytest  # noqa: E402
import torch  # noqa: E402

WEBUI_DIR = os.environ.get("SPO_WEBUI_DIR")
pytestmark = pytest.mark.skipif(not WEBUI_DIR, reason="set SPO_WEBUI_DIR to an AUTOMATIC1111/Forge checkout to run")
PYTHON = os.environ.get("SPO_WEBUI_PYTHON", sys.executable)


def _offline_env(cache: Path) -> dict:
    """The WebUI's environment: its private Hugging Face cache, never the network."""
    return {**os.environ, "HF_HOME": str(cache / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def _drive(spec: dict, work: Path, cache: Path, timeout: int = 3600) -> dict:
    spec = {**spec, "webui_dir": str(Path(WEBUI_DIR).resolve()), "result": str(work / f"{spec['task']}.json")}
    path = work / f"{spec['task']}-spec.json"
    path.write_text(json.dumps(spec))
    env = _offline_env(cache)
    proc = subprocess.run([PYTHON, __file__, str(path)], cwd=WEBUI_DIR, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(Path(spec["result"]).read_text())


def _write_kohya_lora(work: Path, out: Path) -> int:
    """A random SD-1.5 LoRA on every UNet attention projection, in the official SPO release layout,
    converted to kohya form by spo-studio's own converter; returns the number of modules."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from trainer.configs import load_component_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_component_config("sd15", "unet"))
    names = [n for n, _ in unet.named_modules() if ".attn" in n and n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name in names:
        layer = unet.get_submodule(name)
        sd[f"unet.{name}.lora.down.weight"] = torch.randn(4, layer.in_features, generator=g) * 0.05
        sd[f"unet.{name}.lora.up.weight"] = torch.randn(layer.out_features, 4, generator=g) * 0.05
    release = work / "spo_lora_diffusers.safetensors"
    save_file(sd, str(release))
    subprocess.run([sys.executable, "-m", "trainer.lora", "convert", str(release), str(out), "--to", "kohya"],
                   cwd=REPO, check=True, capture_output=True, timeout=600)
    return len(names)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    cache = Path(os.environ.get("SPO_WEBUI_CACHE") or tmp_path_factory.mktemp("webui-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    _drive({"task": "prepare", "checkpoint": str(cache / CKPT),
            "text_config": str(REPO / "trainer" / "configs" / "sd15" / "text_encoder" / "config.json")},
           tmp_path_factory.mktemp("prepare"), cache)
    lora = cache / f"{LORA}.safetensors"
    modules = _write_kohya_lora(tmp_path_factory.mktemp("lora"), lora)
    return {"cache": cache, "lora": lora, "lora_modules": modules}


@pytest.fixture(scope="module")
def data_dir(assets, tmp_path_factory) -> Path:
    """The WebUI's --data-dir: extensions (spo-studio linked as a repository, the probe) and models."""
    import shutil

    d = tmp_path_factory.mktemp("webui-data")
    (d / "extensions" / "spo-probe" / "scripts").mkdir(parents=True)
    (d / "extensions" / "spo-probe" / "scripts" / "spo_probe.py").write_text(PROBE)
    (d / "extensions" / "spo-studio").symlink_to(REPO, target_is_directory=True)
    for sub in ("Stable-diffusion", "Lora", "spo"):
        (d / "models" / sub).mkdir(parents=True)
    (d / "models" / "Stable-diffusion" / CKPT).symlink_to(assets["cache"] / CKPT)
    (d / "models" / "Lora" / f"{LORA}.safetensors").symlink_to(assets["lora"])
    # a copy: the extension refuses links that lead out of the SPM folder
    shutil.copytree(REPO / "trainer" / "shapes" / "weights" / "spm", d / "models" / "spo" / "shapesworld-spm")
    return d


@pytest.fixture(scope="module")
def installed(assets, data_dir, tmp_path_factory) -> dict:
    return _drive({"task": "install", "extension_dir": str(data_dir / "extensions" / "spo-studio")},
                  tmp_path_factory.mktemp("install"), assets["cache"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebUI:
    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log

    def call(self, method: str, path: str, body=None, timeout: int = 1800):
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def txt2img(self, spo=None, **kw):
        body = dict(prompt="a red circle", negative_prompt="", seed=1234, steps=STEPS, width=SIZE, height=SIZE,
                    cfg_scale=5, sampler_name="Euler a", batch_size=2, n_iter=1)
        body.update(kw)
        if spo is not None:
            body["alwayson_scripts"] = {"SPO": {"args": spo}}
        status, res = self.call("POST", "/sdapi/v1/txt2img", body)
        assert status == 200, f"HTTP {status}: {str(res)[-2000:]}"
        res["info"] = json.loads(res["info"])
        res["pil"] = [_decode(b) for b in res["images"]]
        return res


def _decode(b64: str):
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


@pytest.fixture(scope="module")
def webui(assets, data_dir, installed, tmp_path_factory):
    import time
    import urllib.error
    import urllib.request

    port = _free_port()
    log = tmp_path_factory.mktemp("webui-log") / "webui.log"
    env = _offline_env(assets["cache"])
    args = [PYTHON, "launch.py", "--skip-prepare-environment", "--api", "--data-dir", str(data_dir),
            "--ckpt", str(data_dir / "models" / "Stable-diffusion" / CKPT), "--no-download-sd-model",
            "--use-cpu", "all", "--no-half", "--precision", "full", "--skip-torch-cuda-test", "--skip-version-check",
            "--port", str(port)] + os.environ.get("SPO_WEBUI_ARGS", "").split()
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=WEBUI_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 1800
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the WebUI exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/sdapi/v1/sd-models", timeout=10) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.time() > deadline:
                pytest.fail(f"the WebUI did not start in 30 minutes:\n{log.read_text()[-4000:]}")
            time.sleep(5)
        yield WebUI(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _params(res, i: int) -> dict:
    """Image i's infotext, parsed the way the WebUI parses "key: value, ..." (values may be quoted)."""
    import re

    text = res["info"]["infotexts"][i]
    last = text.strip().split("\n")[-1]
    out = {}
    for k, v in re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', last):
        out[k] = json.loads(v) if v.startswith('"') else v
    return out


def _settings_module():
    """webui_extension/settings.py (stdlib only): the accordion's arguments, in API order."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("spo_webui_settings", REPO / "webui_extension" / "settings.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks the module up while building the class
    spec.loader.exec_module(module)
    return module


def _shapes_spm():
    from trainer.spm import load_spm

    return load_spm(REPO / "trainer" / "shapes" / "weights" / "spm")


def _score(spm, image, prompt: str) -> float:
    import numpy as np

    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    return float(spm.score(x, [prompt], torch.zeros(1, dtype=torch.long))[0])


def _differ(a, b) -> bool:
    """Not pixel-identical. (A random-weight VAE decodes nearly every latent to the same grey, so
    a different trajectory moves pixels by a level or two: only identity is a safe test.)"""
    import numpy as np

    return not np.array_equal(np.asarray(a), np.asarray(b))


SPM = "shapesworld-spm"
PER_STEP = [True, "per-step", SPM, 2, 0.25, 1.0, "best", 1.0, 1]  # judged at every step of the window


def test_install_py_as_the_launcher_runs_it_changes_no_package(installed):
    assert installed["before"] == installed["after"]


def test_script_is_listed_with_its_arguments(webui):
    status, scripts = webui.call("GET", "/sdapi/v1/scripts")
    assert status == 200 and "spo" in scripts["txt2img"] and "spo" in scripts["img2img"]
    status, info = webui.call("GET", "/sdapi/v1/script-info")
    spo = next(s for s in info if s["name"] == "spo" and not s["is_img2img"])
    assert len(spo["args"]) == len(_settings_module().SPOSettings.__dataclass_fields__)
    assert "Error loading script: spo_studio.py" not in webui.log.read_text()


def test_per_step_txt2img_over_the_api(webui):
    plain = webui.txt2img()
    res = webui.txt2img(PER_STEP)
    spm = _shapes_spm()
    for i, image in enumerate(res["pil"]):
        params = _params(res, i)
        assert params["SPO"] == "per-step" and params["SPO SPM"] == SPM and params["SPO k"] == "2", params
        assert params["SPO window"] == "0.25-1" and "SPO skipped" not in params
        # this image's own score, as the SPM gives it on the returned PNG (8-bit rounding aside)
        assert float(params["SPO score"]) == pytest.approx(_score(spm, image, "a red circle"), abs=2e-3)
        assert _differ(image, plain["pil"][i])  # SPO changed the sampling
    assert params["SPO score"] != _params(res, 0)["SPO score"]
    assert res["info"]["extra_generation_params"]["SPO"] == "per-step"


def test_per_step_with_ddim_runs_on_a_k_diffusion_sampler(webui):
    res = webui.txt2img(PER_STEP, sampler_name="DDIM", batch_size=1)
    params = _params(res, 0)
    assert params["SPO"] == "per-step" and "SPO score" in params and "SPO skipped" not in params


def test_best_of_k_keeps_the_best_candidate(webui):
    k, n, seed = 3, 2, 300
    res = webui.txt2img([True, "best-of-k", SPM, k], seed=seed, batch_size=n)
    candidates = webui.txt2img(seed=seed, batch_size=k * n)  # seeds 300..305: every candidate
    spm = _shapes_spm()
    assert len(res["pil"]) == n and res["info"]["all_seeds"] == [int(_params(res, j)["Seed"]) for j in range(n)]
    for j in range(n):
        params = _params(res, j)
        seeds = [seed + j + m * n for m in range(k)]  # copy m of image j has seed s + m·N
        scores = {s: _score(spm, candidates["pil"][s - seed], "a red circle") for s in seeds}
        assert int(params["Seed"]) == max(seeds, key=scores.get), (params, scores)
        assert params["SPO"] == "best-of-k" and float(params["SPO score"]) == pytest.approx(max(scores.values()), abs=2e-3)


def test_missing_spm_generates_without_spo_and_says_why(webui):
    plain = webui.txt2img(batch_size=1)
    res = webui.txt2img([True, "per-step", "nope.safetensors", 2], batch_size=1)
    params = _params(res, 0)
    assert "not found" in params["SPO skipped"] and "SPO score" not in params
    assert not _differ(res["pil"][0], plain["pil"][0])


def test_spo_lora_loads_every_module(webui, assets):
    plain = webui.txt2img(batch_size=1)
    res = webui.txt2img(prompt=f"a red circle <lora:{LORA}:1>", batch_size=1)
    status, loaded = webui.call("GET", "/spo-probe/networks")
    n = assets["lora_modules"]
    log = webui.log.read_text()
    if "[LORA] " in log:  # Forge applies LoRAs with its own patcher and says so in the console
        loaded_line = next(line for line in log.splitlines() if line.startswith("[LORA] Loaded ") and LORA in line)
        assert f"-UNet with {n} keys" in loaded_line and "(skipped 0 keys)" in loaded_line, loaded_line
        assert "unmatched keys" not in log and "mismatch" not in log.lower()
    else:  # A1111's Lora extension: one network module per LoRA module it matched
        assert status == 200 and loaded == {LORA: n}
    # (no pixel check: a random-weight VAE decodes the LoRA's different latents to the same 8-bit grey)
    assert f"{LORA}: " in _params(res, 0).get("Lora hashes", "") and "Lora hashes" not in _params(plain, 0)


def test_scorer_tab_ranks_images_in_the_server(webui, tmp_path):
    res = webui.txt2img(batch_size=2)
    paths = []
    for i, image in enumerate(res["pil"]):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    status, out = webui.call("POST", "/spo-probe/score", {"paths": paths, "prompt": "a red circle", "spm": SPM})
    assert status == 200 and out["message"].startswith("Scored 2"), out
    spm = _shapes_spm()
    want = sorted(((_score(spm, img, "a red circle"), f"{i}.png") for i, img in enumerate(res["pil"])), reverse=True)
    assert [(row[1], row[2]) for row in out["rows"]] == [(name, pytest.approx(s, abs=1e-3)) for s, name in want]
    status, config = webui.call("GET", "/config")
    assert status == 200 and "SPO Scorer" in json.dumps(config)
