"""The ComfyUI nodes against a stand-in of the ComfyUI APIs they use (tests/comfy_standin/).

Models behind the stand-in are tiny diffusers/transformers modules; the SPM is a tiny step-aware
CLIP in spo-studio's folder format. The real ComfyUI runs in tests/test_comfy_integration.py.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fixtures_lora import add_random_adapter, tiny_sd15_unet, tiny_text_encoder
from spm_fixtures import randomize_adaln, tiny_clip, tokenizer_dir
from tiny_models import tiny_vae, write_tokenizer

REPO = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "comfy_standin"
PROMPT = "a red circle on a blue background"


# ====================================================================== the stand-in host


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    """The stand-in ComfyUI importable as `folder_paths` / `comfy.*`, models dir in tmp, and the node
    pack imported fresh (as ComfyUI imports it, so models/spo gets registered)."""
    standin = tmp_path / "standin"
    shutil.copytree(STANDIN, standin)
    write_tokenizer(standin / "comfy" / "sd1_tokenizer")  # ComfyUI ships its CLIP tokenizer there
    models = tmp_path / "models"
    for d in ("checkpoints", "loras", "spo"):
        (models / d).mkdir(parents=True)
    monkeypatch.setenv("SPO_STANDIN_MODELS_DIR", str(models))
    monkeypatch.syspath_prepend(str(standin))
    _forget_modules()
    import comfy_nodes

    yield {"models": models, "nodes": comfy_nodes, "standin": standin}
    _forget_modules()


def _forget_modules():
    for name in list(sys.modules):
        if name in ("folder_paths", "server", "comfy", "comfy_nodes") or name.startswith(("comfy.", "comfy_nodes.")):
            del sys.modules[name]


class StandinBaseModel(torch.nn.Module):
    """What a sampler reaches as model.inner_model.inner_model: model_sampling, process_latent_out,
    model_config (its class name is the family, as in comfy.supported_models), diffusion_model."""

    def __init__(self, family: str = "SD15", kind: str = "EPS"):
        super().__init__()
        import comfy.model_sampling as ms

        self.diffusion_model = tiny_sd15_unet()
        self.model_sampling = ms.model_sampling(getattr(ms, kind))
        self.model_config = type(family, (), {})()
        self.scale_factor = 0.18215

    def process_latent_out(self, latent):
        return latent / self.scale_factor

    def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
        return self.model_sampling.noise_scaling(sigma.reshape([sigma.shape[0]] + [1] * (len(noise.shape) - 1)),
                                                 noise, latent_image)

    def apply_model(self, x, sigma, cond):
        t = self.model_sampling.timestep(sigma).float()
        eps = self.diffusion_model(self.model_sampling.calculate_input(sigma, x), t,
                                   encoder_hidden_states=cond.repeat(x.shape[0] // cond.shape[0], 1, 1)).sample
        return self.model_sampling.calculate_denoised(sigma, eps, x)


class StandinGuider:
    """CFG around the base model like comfy.samplers.CFGGuider (conditioning tiled to the batch)."""

    def __init__(self, base, cond, uncond, cfg=4.0):
        self.inner_model, self.cond, self.uncond, self.cfg = base, cond, uncond, cfg
        self.rows = []

    @torch.no_grad()
    def __call__(self, x, sigma, model_options={}, seed=None):
        self.rows.append(x.shape[0])
        out = self.inner_model.apply_model(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                           torch.cat([self.uncond.repeat(x.shape[0], 1, 1), self.cond.repeat(x.shape[0], 1, 1)]))
        u, c = out.chunk(2)
        return u + self.cfg * (c - u)


class StandinVAE:
    """comfy.sd.VAE.decode: unscaled latents [N, 4, h, w] -> IMAGE [N, 8h', 8w', 3] in 0..1."""

    def __init__(self):
        self.vae = tiny_vae().eval()
        self.decoded = []

    @torch.no_grad()
    def decode(self, latents):
        self.decoded.append(latents.clone())
        return ((self.vae.decode(latents).sample + 1) / 2).clamp(0, 1).movedim(1, -1)


def write_tiny_spm(folder: Path, family: str | None = "sd15") -> None:
    from transformers import CLIPTokenizer

    from trainer.spm.weights import save_pretrained, spm_from_clip

    spm = spm_from_clip(tiny_clip(), step_aware=True, family=family)
    randomize_adaln(spm)
    spm.tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir(folder.parent / "tok")))
    save_pretrained(spm, folder)


def load_spm_node(comfy, name="tiny/model.safetensors", family="sd15"):
    if not (comfy["models"] / "spo" / "tiny").exists():
        write_tiny_spm(comfy["models"] / "spo" / "tiny", family)
    return comfy["nodes"].LoadSPM().load(name, "fp32")[0]


def images_batch(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 32, 32, 3, generator=g)


# ====================================================================== the pack itself


def test_pack_import_is_light_and_works_without_comfyui():
    """ComfyUI imports the root __init__ at start-up: no ComfyUI, transformers or trainer needed."""
    code = textwrap.dedent(f"""
        import importlib.util, sys, time
        t = time.time()
        spec = importlib.util.spec_from_file_location("spo_pack", {str(REPO / "__init__.py")!r},
                                                      submodule_search_locations=[{str(REPO)!r}])
        m = importlib.util.module_from_spec(spec); sys.modules["spo_pack"] = m; spec.loader.exec_module(m)  # as ComfyUI does
        heavy = sorted(n for n in ("transformers", "diffusers", "spo_studio.spm", "spo_studio.lora", "trainer", "folder_paths")
                       if n in sys.modules)
        print(len(m.NODE_CLASS_MAPPINGS), heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "[]"]


def test_every_node_is_in_the_category_with_tooltips_on_every_input(comfy):
    (comfy["models"] / "loras" / "x.safetensors").write_bytes(b"")
    for cls in comfy["nodes"].NODE_CLASS_MAPPINGS.values():
        assert cls.CATEGORY == "spo-studio" and cls.DESCRIPTION
        inputs = cls.INPUT_TYPES()["required"]
        for name, (_type, opts) in inputs.items():
            assert opts.get("tooltip"), f"{cls.__name__}.{name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        assert callable(getattr(cls(), cls.FUNCTION))


# ====================================================================== Load SPM


def test_models_spo_is_registered_and_lists_spm_files(comfy):
    import folder_paths

    write_tiny_spm(comfy["models"] / "spo" / "tiny")
    (comfy["models"] / "spo" / "released.bin").write_bytes(b"x")
    paths, exts = folder_paths.folder_names_and_paths["spo"]
    assert str(comfy["models"] / "spo") in paths and {".bin", ".safetensors"} <= exts
    assert folder_paths.get_filename_list("spo") == ["released.bin", "tiny/model.safetensors"]
    assert comfy["nodes"].LoadSPM.INPUT_TYPES()["required"]["spm_name"][0] == ["released.bin", "tiny/model.safetensors"]


def test_load_spm_reads_a_folder_format_spm_through_its_weights_file(comfy):
    from trainer.spm.weights import load_spm

    spm = load_spm_node(comfy)
    ref = load_spm(comfy["models"] / "spo" / "tiny")
    imgs = images_batch(3).movedim(-1, 1) * 2 - 1
    t = torch.tensor([0, 300, 900])
    torch.testing.assert_close(spm.score(imgs, [PROMPT] * 3, t), ref.score(imgs, [PROMPT] * 3, t))
    assert spm.family == "sd15" and spm.step_aware


def test_a_released_file_gets_comfyuis_bundled_tokenizer(comfy, monkeypatch):
    import trainer.spm.weights as weights

    seen = {}
    monkeypatch.setattr(weights, "load_spm", lambda path, **kw: seen.update(path=path, **kw) or "spm")
    (comfy["models"] / "spo" / "sd-v1-5_step-aware_preference_model.bin").write_bytes(b"x")
    assert comfy["nodes"].LoadSPM().load("sd-v1-5_step-aware_preference_model.bin", "fp16") == ("spm",)
    assert Path(seen["tokenizer"]) == comfy["standin"] / "comfy" / "sd1_tokenizer"
    assert seen["dtype"] == torch.float16


@pytest.mark.parametrize("content,needle", [
    (b"not a safetensors file", "not a readable safetensors file"),
    (None, "is not in models/spo"),
])
def test_load_spm_bad_files_are_one_line(comfy, content, needle):
    from comfy_nodes.errors import NodeInputError

    if content is not None:
        (comfy["models"] / "spo" / "broken.safetensors").write_bytes(content)
    with pytest.raises(NodeInputError) as e:
        comfy["nodes"].LoadSPM().load("broken.safetensors", "fp32")
    assert needle in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("Load SPM")


# ====================================================================== Load Scorer


@pytest.fixture
def tiny_released_sizes(monkeypatch):
    """The released-size defaults of HPSv2 / ImageReward replaced by the tiny test sizes (the loaders
    themselves are checked at those sizes in tests/test_scorers.py)."""
    import trainer.scorers.hpsv2 as hpsv2
    import trainer.scorers.imagereward as imagereward
    from scorer_fixtures import tiny_imagereward_config, tiny_openclip_config

    monkeypatch.setattr(hpsv2, "vit_h14_config", tiny_openclip_config)
    monkeypatch.setattr(imagereward, "default_config", tiny_imagereward_config)


@pytest.mark.parametrize("kind, make, name", [
    ("hpsv2", "save_tiny_hpsv2", "hps/HPS_v2_compressed.pt"),
    ("imagereward", "save_tiny_imagereward", "ir/ImageReward.pt"),
])
def test_load_scorer_feeds_step_aware_score_best_of_k(comfy, tiny_released_sizes, kind, make, name):
    import scorer_fixtures
    from trainer.scorers import ScorerSpec, load_scorer

    getattr(scorer_fixtures, make)(comfy["models"] / "spo" / name.split("/")[0])
    assert name in comfy["nodes"].LoadScorer.INPUT_TYPES()["required"]["scorer_name"][0]
    scorer = comfy["nodes"].LoadScorer().load(kind, name, "fp32")[0]
    images = images_batch(5)
    out = comfy["nodes"].StepAwareScore().score(images, scorer, PROMPT, 0, 2)
    sorted_images, scores, top = out["result"]
    direct = load_scorer(ScorerSpec(kind, kind, str(comfy["models"] / "spo" / name)))
    want = direct.score(images.movedim(-1, 1) * 2 - 1, [PROMPT] * 5, None)
    order = torch.argsort(want, descending=True)
    assert scores == pytest.approx(want[order].tolist(), abs=1e-5)
    assert torch.equal(top, images[order[:2]])


def test_load_scorer_hpsv2_without_a_tokenizer_uses_comfyuis_clip_tokenizer(comfy, tiny_released_sizes):
    from scorer_fixtures import save_tiny_hpsv2

    folder = comfy["models"] / "spo" / "hps"
    save_tiny_hpsv2(folder)
    shutil.rmtree(folder / "tokenizer")
    scorer = comfy["nodes"].LoadScorer().load("hpsv2", "hps/HPS_v2_compressed.pt", "fp32")[0]
    assert Path(scorer.model.get_tokenizer().name_or_path) == comfy["standin"] / "comfy" / "sd1_tokenizer"


def test_load_scorer_bad_file_is_one_line(comfy):
    from comfy_nodes.errors import NodeInputError

    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, comfy["models"] / "spo" / "HPS_v2_compressed.pt")
    with pytest.raises(NodeInputError) as e:
        comfy["nodes"].LoadScorer().load("hpsv2", "HPS_v2_compressed.pt", "fp32")
    msg = str(e.value)
    assert msg.startswith("Load Scorer (hpsv2") and "missing" in msg and "\n" not in msg


# ====================================================================== StepAwareScore


def test_step_aware_score_sorts_best_first_and_keeps_top_n(comfy):
    spm = load_spm_node(comfy)
    images = images_batch(5)
    out = comfy["nodes"].StepAwareScore().score(images, spm, PROMPT, 0, 2)
    sorted_images, scores, top = out["result"]
    want = spm.score(images.movedim(-1, 1) * 2 - 1, [PROMPT] * 5, torch.zeros(5, dtype=torch.long))
    order = torch.argsort(want, descending=True)
    assert scores == pytest.approx(want[order].tolist(), rel=1e-5)
    assert torch.equal(sorted_images, images[order]) and torch.equal(top, images[order[:2]])
    assert isinstance(scores, list) and all(isinstance(s, float) for s in scores)
    lines = out["ui"]["text"][0].splitlines()
    assert len(lines) == 5 and lines[0].startswith(f"#1: image {int(order[0])}")


def test_step_aware_score_shows_the_ranking_on_the_node(comfy):
    from server import PromptServer

    spm = load_spm_node(comfy)
    comfy["nodes"].StepAwareScore().score(images_batch(3), spm, PROMPT, 0, 1)  # no web server: no message
    srv = PromptServer()
    out = comfy["nodes"].StepAwareScore().score(images_batch(3), spm, PROMPT, 0, 1, unique_id="13")
    assert srv.texts == [("13", out["ui"]["text"][0])]


def test_step_aware_score_depends_on_the_timestep(comfy):
    spm = load_spm_node(comfy)
    node = comfy["nodes"].StepAwareScore()
    s0 = node.score(images_batch(4), spm, PROMPT, 0, 1)["result"][1]
    s7 = node.score(images_batch(4), spm, PROMPT, 700, 1)["result"][1]
    assert s0 != pytest.approx(s7, abs=1e-4)


def test_step_aware_score_bad_input_is_one_line(comfy):
    from comfy_nodes.errors import NodeInputError

    spm = load_spm_node(comfy)
    with pytest.raises(NodeInputError, match="StepAwareScore: the prompt is empty"):
        comfy["nodes"].StepAwareScore().score(images_batch(2), spm, "  ", 0, 1)
    with pytest.raises(NodeInputError, match="StepAwareScore: expected an IMAGE batch"):
        comfy["nodes"].StepAwareScore().score(torch.rand(2, 32, 32), spm, PROMPT, 0, 1)


# ====================================================================== SPOSampler


def sampler_setup(comfy, family="SD15", kind="EPS", spm_family="sd15", k=3, window=(0.25, 1.0), selection="best",
                  **strategy):
    spm = load_spm_node(comfy, family=spm_family)
    vae = StandinVAE()
    g = torch.Generator().manual_seed(0)
    guider = StandinGuider(StandinBaseModel(family, kind), torch.randn(1, 4, 32, generator=g), torch.randn(1, 4, 32, generator=g))
    strategy = strategy or dict(strategy="greedy", judge_every=1)
    (sampler,) = comfy["nodes"].SPOSampler().get_sampler(spm, vae, PROMPT, k, *window, selection, 1.0, **strategy)
    return sampler, guider, vae, spm


def run_sampler(sampler, guider, seed=7, steps=8, batch=1, mask=None, latent=None):
    sigmas = torch.cat([torch.linspace(6.0, 0.05, steps), torch.zeros(1)])
    noise = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    latent = torch.zeros_like(noise) if latent is None else latent
    progress = []
    denoised = []

    def callback(i, x0, x, total):
        progress.append((i, total))
        denoised.append(x0.clone())

    out = sampler.sample(guider, sigmas, {"seed": seed, "model_options": {}}, callback, noise, latent, denoise_mask=mask)
    return out, progress, denoised


def test_spo_sampler_is_a_ksampler_with_exact_cost_progress_and_determinism(comfy):
    from trainer.spo.guided_sampler import expected_model_evals

    sampler, guider, vae, spm = sampler_setup(comfy, k=3, window=(0.25, 1.0))
    assert type(sampler).__name__ == "KSAMPLER"
    out, progress, _ = run_sampler(sampler, guider, batch=2)
    # 8 steps, window [0.25, 1): steps 2..6 branch (step 7 goes to σ = 0) -> W = 5
    assert sum(guider.rows) == 2 * expected_model_evals(8, 5, 3) == 2 * 18
    assert progress == [(i, 8) for i in range(8)]
    trace = sampler.sampler_function.last_trace
    assert len(trace.branches) == trace.scorer_calls == 5
    again, *_ = run_sampler(sampler, guider, batch=2)
    other, *_ = run_sampler(sampler, guider, seed=8, batch=2)
    assert torch.equal(out, again) and not torch.allclose(out, other)


def test_spo_sampler_scores_decoded_candidates_at_their_timestep_and_keeps_the_best(comfy):
    sampler, guider, vae, spm = sampler_setup(comfy, k=3, window=(0.0, 1.0))
    _, _, denoised = run_sampler(sampler, guider, steps=4)
    trace = sampler.sampler_function.last_trace
    base = guider.inner_model
    assert len(vae.decoded) == len(trace.branches) == 3
    for rec, latents in zip(trace.branches, vae.decoded):
        # the VAE got process_latent_out(candidate x0s); the chosen one is the next step's model output
        chosen = latents[int(rec.chosen[0])] * base.scale_factor
        torch.testing.assert_close(chosen, denoised[rec.step + 1][0])
        # what the SPM saw: VAE decode of the candidates' x0 (process_latent_out), at the candidate's t
        t = int(base.model_sampling.timestep(torch.tensor(rec.sigma_next)))
        assert rec.timestep == t
        images = (vae.vae.decode(latents).sample.clamp(-1, 1))
        want = spm.score(images, [PROMPT] * 3, torch.full((3,), t))
        torch.testing.assert_close(rec.scores[:, 0], want, rtol=1e-4, atol=1e-4)
        assert int(rec.chosen[0]) == int(want.argmax())


def test_spo_sampler_with_a_noise_mask_and_a_batch_keeps_the_unmasked_latent(comfy):
    """Inpainting: ComfyUI blends the B-row latent inside each model call; k·B candidates must still fit."""
    sampler, guider, _, _ = sampler_setup(comfy, k=3, window=(0.0, 1.0))
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 4:] = 1.0  # repaint the right half only
    out, progress, _ = run_sampler(sampler, guider, batch=2, mask=mask, latent=latent, steps=4)
    torch.testing.assert_close(out[..., :4], latent[..., :4])
    assert not torch.allclose(out[..., 4:], latent[..., 4:]) and len(progress) == 4


def test_spo_sampler_refuses_an_spm_of_another_family_and_flow_models(comfy):
    from comfy_nodes.errors import NodeInputError

    sampler, guider, _, _ = sampler_setup(comfy, family="SD15", spm_family="sdxl")
    with pytest.raises(NodeInputError, match="SPOSampler: this SPM was trained for sdxl but the model is sd15"):
        run_sampler(sampler, guider)
    sampler, guider, _, _ = sampler_setup(comfy, kind="CONST", spm_family="sd15")
    with pytest.raises(NodeInputError, match="SPOSampler: this model samples as"):
        run_sampler(sampler, guider)


def test_spo_sampler_offers_the_strategies_with_bench_defaults_and_cost_tooltips(comfy):
    from trainer.spo.strategies import HOST_DEFAULT

    spec = comfy["nodes"].SPOSampler.INPUT_TYPES()
    req, opt = spec["required"], spec["optional"]
    assert opt["strategy"][0] == ["fk", "best-of-k", "greedy"] and opt["strategy"][1]["default"] == HOST_DEFAULT.name
    assert (req["k"][1]["default"], req["window_start"][1]["default"], req["window_end"][1]["default"],
            opt["judge_every"][1]["default"], opt["potential"][1]["default"], opt["lam"][1]["default"]) == (
        HOST_DEFAULT.k, *HOST_DEFAULT.window, HOST_DEFAULT.every, HOST_DEFAULT.potential, HOST_DEFAULT.lam)
    assert "≈ k× the model evaluations of plain sampling" in req["k"][1]["tooltip"]
    assert "≈ k× the model evaluations of plain sampling" in opt["strategy"][1]["tooltip"]


@pytest.mark.parametrize("strategy", ["fk", "best-of-k"])
def test_spo_sampler_particle_strategies_cost_what_the_cost_function_says(comfy, strategy, caplog):
    """fk / best-of-k through ComfyUI: the guider and the VAE count what strategy_cost predicts, the
    judged steps are reported as progress, and the seed makes it repeatable."""
    from trainer.spo.strategies import resampling_steps, strategy_cost

    sampler, guider, vae, spm = sampler_setup(comfy, k=3, window=(0.25, 0.75), strategy=strategy, judge_every=2,
                                              potential="max", lam=2.0)
    config = sampler.sampler_function.config
    assert config.name == strategy and config.k == 3 and config.every == 2 and config.lam == 2.0
    with caplog.at_level("INFO", logger="spo-studio"):
        out, progress, _ = run_sampler(sampler, guider, batch=2)
    sigmas = torch.cat([torch.linspace(6.0, 0.05, 8), torch.zeros(1)])
    cost = strategy_cost(config, sigmas)
    assert sum(guider.rows) == 2 * cost.model_evals == 2 * (1 + 3 * 7)
    assert sum(latents.shape[0] for latents in vae.decoded) == 2 * cost.scorer_images
    judged = resampling_steps(config, sigmas) if strategy == "fk" else []
    assert judged == ([2, 4] if strategy == "fk" else [])
    assert cost.scorer_images == 3 * (len(judged) + 1)
    trace = sampler.sampler_function.last_trace
    assert [r.step for r in trace.branches] == judged + [8]
    total = len(judged) + 1  # the judged steps and the final pick, counted in the log as they happen
    assert [m for m in caplog.messages if "judged step" in m] == [
        f"SPOSampler: judged step {j}/{total} ({strategy}, k=3)" for j in range(1, total + 1)]
    # the kept sample is the particle the SPM scored best at t = 0
    assert trace.branches[-1].timestep == 0 and torch.equal(trace.branches[-1].chosen,
                                                             trace.branches[-1].scores.argmax(dim=0))
    assert progress == [(i, 8) for i in range(8)] and out.shape == (2, 4, 8, 8)
    again, *_ = run_sampler(sampler, guider, batch=2)
    assert torch.equal(out, again)


@pytest.mark.parametrize("args,needle", [
    (dict(prompt=" "), "the prompt is empty"),
    (dict(strategy="beam"), "strategy must be one of"),
    (dict(strategy="fk", potential="min"), "potential must be one of"),
    (dict(strategy="fk", judge_every=0), "judge every must be at least 1"),
    (dict(k=1), "k must be at least 2"),
    (dict(window_start=0.8, window_end=0.2), "window_start <= window_end"),
    (dict(selection="worst"), "selection must be best or softmax"),
])
def test_spo_sampler_bad_settings_are_one_line(comfy, args, needle):
    from comfy_nodes.errors import NodeInputError

    kw = dict(spm=object(), vae=object(), prompt=PROMPT, k=4, window_start=0.2, window_end=1.0, selection="best", temperature=1.0)
    with pytest.raises(NodeInputError, match=needle) as e:
        comfy["nodes"].SPOSampler().get_sampler(**{**kw, **args})
    assert "\n" not in str(e.value)


# ====================================================================== SPO LoRA Loader


class StandinCLIP:
    """comfy.sd.CLIP as LoRA loading sees it: cond_stage_model (clip_l.transformer.*), clone, add_patches."""

    def __init__(self, encoder, patcher=None):
        from comfy.model_patcher import ModelPatcher

        self.encoder = encoder
        self.cond_stage_model = _Prefixed(encoder, "clip_l.transformer.text_model.")
        self.patcher = patcher or ModelPatcher(self.cond_stage_model)

    def clone(self):
        return StandinCLIP(self.encoder, self.patcher.clone())

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        return self.patcher.add_patches(patches, strength_patch, strength_model)


class _Prefixed(torch.nn.Module):
    """State dict of a transformers-5 CLIPTextModel under ComfyUI's key names."""

    def __init__(self, encoder, prefix):
        super().__init__()
        self.encoder, self.prefix = encoder, prefix

    def state_dict(self, *a, **k):
        sd = self.encoder.state_dict()
        return {self.prefix + (n[len("text_model."):] if n.startswith("text_model.") else n): v for n, v in sd.items()}


def lora_setup(comfy, tmp_path, layout="diffusers"):
    """A peft-trained LoRA on a tiny SD-1.5-layout UNet + text encoder, saved in `layout`; the base
    models for the stand-in MODEL/CLIP; and the peft models to compare deltas with."""
    from comfy.model_patcher import ModelPatcher
    from safetensors.torch import load_file, save_file

    from trainer.lora import combine, lora_from_peft, save_diffusers, save_kohya

    unet = add_random_adapter(tiny_sd15_unet(), ["to_q", "to_k", "to_v", "to_out.0"], alpha=6.0)
    te = add_random_adapter(tiny_text_encoder(), ["q_proj", "k_proj", "v_proj", "out_proj"], alpha=2.0, seed=3)
    state = combine(lora_from_peft(unet, "unet", family="shapes"), lora_from_peft(te, "text_encoder", family="shapes"))
    path = comfy["models"] / "loras" / f"tiny_{layout}.safetensors"
    if layout == "kohya":
        save_kohya(state, path, family="shapes", dtype=torch.float32)
    else:
        save_diffusers(state, path)
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        save_file(tensors, str(path), metadata={**meta, "spo_studio.family": "shapes"})
    base = StandinBaseModel("SD15")
    base.diffusion_model.load_state_dict({k: v for k, v in _base_weights(unet).items()})
    clip = StandinCLIP(tiny_text_encoder())
    clip.encoder.load_state_dict(_base_weights(te))
    return ModelPatcher(base), clip, path.name, state


def _base_weights(peft_model) -> dict:
    """The frozen base weights of a peft-wrapped model under the plain module names."""
    out = {}
    for name, v in peft_model.state_dict().items():
        if "lora_" in name:
            continue
        out[name.replace(".base_layer", "")] = v
    return out


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_lora_loader_applies_every_module_with_the_peft_delta(comfy, tmp_path, layout):
    model, clip, name, state = lora_setup(comfy, tmp_path, layout)
    out = comfy["nodes"].SPOLoraLoader().load_lora(model, clip, name, 0.8, 0.5)
    new_model, new_clip, report = out["result"]
    n_unet, n_te = len(state.component("unet")), len(state.component("text_encoder"))
    assert f"{n_unet + n_te}/{n_unet + n_te} modules applied (UNet {n_unet}, text encoder {n_te}), 0 not applied" in report
    assert out["ui"]["text"] == [report] and "\n" not in report
    assert model.patches == {} and new_model is not model  # inputs untouched, as ComfyUI expects
    for path, mod in state.component("unet").items():
        key = f"diffusion_model.{path}.weight"
        base = model.model.state_dict()[key].float()
        torch.testing.assert_close(new_model.patched_weight(key), base + 0.8 * mod.delta().reshape(base.shape),
                                   rtol=1e-5, atol=1e-6)
    for path, mod in state.component("text_encoder").items():
        key = "clip_l.transformer." + path + ".weight"
        base = clip.cond_stage_model.state_dict()[key].float()
        torch.testing.assert_close(new_clip.patcher.patched_weight(key), base + 0.5 * mod.delta().reshape(base.shape),
                                   rtol=1e-5, atol=1e-6)


def test_lora_loader_reports_modules_the_model_lacks(comfy, tmp_path):
    from comfy_nodes.lora_node import apply_lora

    model, clip, name, state = lora_setup(comfy, tmp_path)
    from trainer.lora import to_kohya_state_dict

    kohya = to_kohya_state_dict(state, "shapes")
    kohya["lora_unet_no_such_block_to_q.lora_down.weight"] = torch.zeros(4, 8)
    kohya["lora_unet_no_such_block_to_q.lora_up.weight"] = torch.zeros(8, 4)
    _, _, applied, missing = apply_lora(model, clip, kohya, 1.0, 1.0)
    assert missing == ["lora_unet_no_such_block_to_q"] and len(applied) == len(state.modules)


def test_lora_loader_zero_strengths_return_the_inputs(comfy, tmp_path):
    model, clip, name, _ = lora_setup(comfy, tmp_path)
    out = comfy["nodes"].SPOLoraLoader().load_lora(model, clip, name, 0.0, 0.0)
    assert out["result"][0] is model and out["result"][1] is clip


def test_lora_loader_refuses_wrong_family_and_corrupt_files_in_one_line(comfy, tmp_path):
    from safetensors.torch import save_file

    from comfy_nodes.errors import NodeInputError

    model, clip, _, _ = lora_setup(comfy, tmp_path)
    sdxl = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    save_file({f"{sdxl}.lora_down.weight": torch.zeros(4, 640), f"{sdxl}.lora_up.weight": torch.zeros(640, 4)},
              str(comfy["models"] / "loras" / "xl.safetensors"), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    (comfy["models"] / "loras" / "junk.safetensors").write_bytes(b"\x00" * 20)
    loader = comfy["nodes"].SPOLoraLoader()
    with pytest.raises(NodeInputError, match="xl.safetensors was made for SDXL but the model is SD-1.5") as e:
        loader.load_lora(model, clip, "xl.safetensors", 1.0, 1.0)
    assert "\n" not in str(e.value)
    with pytest.raises(NodeInputError, match=r"SPO LoRA Loader \(junk.safetensors\): ") as e:
        loader.load_lora(model, clip, "junk.safetensors", 1.0, 1.0)
    assert "\n" not in str(e.value)


# ====================================================================== example workflows


def test_example_workflows_match_the_nodes_as_they_are(comfy, monkeypatch):
    """The UI files store widget values by position: they must be what ui_format makes from the API
    files with the recorded node definitions, and our nodes must still have those definitions
    (else: regenerate with examples/comfyui/ui_format.py)."""
    import json

    examples = REPO / "examples" / "comfyui"
    monkeypatch.syspath_prepend(str(examples))
    from ui_format import api_to_ui, compact_info, node_info_of, ui_to_api

    info = json.loads((examples / "node_info.json").read_text())
    (comfy["models"] / "loras" / "x.safetensors").write_bytes(b"")
    for name, cls in comfy["nodes"].NODE_CLASS_MAPPINGS.items():
        now = compact_info({name: node_info_of(cls)})[name]
        assert json.dumps(now) == json.dumps(info[name]), f"{name} changed (order counts): regenerate the UI files"
    apis = sorted(examples.glob("*.api.json"))
    assert len(apis) == 3
    for api_path in apis:
        api = json.loads(api_path.read_text())
        ui = json.loads(api_path.with_name(api_path.name.replace(".api.json", ".json")).read_text())
        assert ui == api_to_ui(api, info)
        assert {k: v["inputs"] for k, v in ui_to_api(ui, info).items()} == {k: v["inputs"] for k, v in api.items()}
