"""The always-visible "SPO" script for txt2img and img2img (AUTOMATIC1111 / Forge).

Glue only: the sampling is `trainer.spo.guided_sampler` (through `guided.py`), the scoring
is `trainer.spm`. What happens, by A1111 hook:

- process: read the accordion (or the API args), load the SPM, check it fits the
  checkpoint; best-of-k: k copies of every image (seeds s, s+N, s+2N, ...).
- process_before_every_sampling (WebUI >= 1.9; on 1.8 the same point is reached through
  `compat.run_before_sampling`): per-step and fk modes swap the sampler's k-diffusion
  function for SPM-guided sampling (spo_studio.spo.strategies) on the same sigmas (not on the
  hires-fix pass).
- postprocess_batch_list: score every image at t = 0; best-of-k keeps the best of each k.
- postprocess_image: this image's settings and SPM score go into the infotext as plain
  strings (A1111 before 1.10 writes extra_generation_params values as they are and
  serialises them to JSON for the API: no callables), read back by "send to txt2img".

Any problem (missing SPM, wrong family, k < 2, a prompt the SPM rejects) becomes one line
under the images and in the console; the image is then generated without SPO.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import gradio as gr
import torch

from modules import devices, paths, script_callbacks, scripts, sd_samplers_common, sd_samplers_kdiffusion, shared
from modules.ui_components import InputAccordion, ToolButton
from spo_studio.families import FAMILIES

from . import compat, guided, scorer_tab
from .prompt_text import plain_prompt
from .settings import (
    KEY_EVERY,
    KEY_K,
    KEY_LAMBDA,
    KEY_MODE,
    KEY_POTENTIAL,
    KEY_SCORE,
    KEY_SELECTION,
    KEY_SKIPPED,
    KEY_SPM,
    KEY_TEMPERATURE,
    KEY_WINDOW,
    MODE_WINDOWS,
    MODES,
    POTENTIALS,
    SELECTIONS,
    K_MAX,
    SPOSettings,
)
from .spm_files import SPMCache, SPMUnavailable, check_family, default_spm_dir, hide_paths, list_spm_files, resolve_spm

log = logging.getLogger("spo_studio")

INFOTEXT_KEYS = (KEY_MODE, KEY_SPM, KEY_K, KEY_WINDOW, KEY_EVERY, KEY_SELECTION, KEY_TEMPERATURE, KEY_POTENTIAL,
                 KEY_LAMBDA, KEY_SCORE, KEY_SKIPPED)
GUIDED_MODES = ("per-step", "fk")  # modes that replace the sampler function
SPM_CACHE = SPMCache()  # device and dtype are set on first use: A1111 knows them only after start-up


def spm_dir() -> str:
    """`--spo-models-dir` (preload.py) or `models/spo`."""
    return default_spm_dir(paths.models_path, getattr(shared.cmd_opts, "spo_models_dir", None))


def model_family(sd_model) -> str:
    """"sd15" | "sdxl" | another name for checkpoints SPO does not support."""
    for name, family in FAMILIES.items():  # the family table says which A1111 flag marks its models
        if family.a1111_flag and getattr(sd_model, family.a1111_flag, False):
            return name
    for flag, name in (("is_sd3", "SD3"), ("is_sd2", "SD2"), ("is_ssd", "SSD-1B")):
        if getattr(sd_model, flag, False):
            return name
    if getattr(sd_model, "is_sd1", True) is False:  # Forge: Flux and the other non-SD engines set no flag
        return type(sd_model).__name__
    return "sd15"


def load_spm_by_name(name: str):
    """The SPM file `name` from the SPM folder, loaded once onto the WebUI's device."""
    if SPM_CACHE.device is None:
        # the SPM is a ~1.3 B-parameter CLIP-H: half precision on the GPU unless the WebUI runs in full
        SPM_CACHE.device = devices.device
        SPM_CACHE.dtype = devices.dtype if devices.device.type == "cuda" else torch.float32
    folder = spm_dir()
    try:
        return SPM_CACHE.get(resolve_spm(folder, name))
    except SPMUnavailable as e:  # UI and API replies never show where the server keeps its files
        raise SPMUnavailable(hide_paths(str(e), folder)) from None


def load_checked_spm(settings: SPOSettings, sd_model):
    """The SPM for these settings, checked against the loaded checkpoint's family."""
    loaded = load_spm_by_name(settings.spm)
    check_family(loaded.family, model_family(sd_model), settings.spm)
    return loaded.model


def register_callbacks() -> None:
    """Add the "SPO Scorer" tab. Called by the scripts/ entry file each time A1111 loads it
    (A1111 clears all callbacks before re-running scripts on "Reload UI")."""
    script_callbacks.on_ui_tabs(
        lambda: scorer_tab.create_tab(
            lambda: list_spm_files(spm_dir()), lambda name: load_spm_by_name(name).model,
            lambda kind, name: scorer_tab.load_scorer(
                kind, resolve_spm(spm_dir(), name), devices.device,
                devices.dtype if devices.device.type == "cuda" else torch.float32),
        )
    )


@dataclass
class RunState:
    """Per-generation state, kept on the processing object as `p.spo`."""

    settings: SPOSettings
    spm: object = None
    active: bool = False
    batch_size: int = 0  # the user's batch size (best-of-k multiplies p.batch_size by k)
    messages: list[str] = field(default_factory=list)
    skipped_all: str | None = None  # why no image of the job got SPO
    # infotext per image, keyed by (seed, prompt): A1111 indexes images per batch in one place
    # and per job in another, but both pass matching seed and prompt lists.
    fields: dict[tuple[int, str], dict[str, str]] = field(default_factory=dict)
    kept: dict[str, list] = field(  # best-of-k: the kept images' job lists
        default_factory=lambda: {"prompts": [], "negative_prompts": [], "seeds": [], "subseeds": []})
    kept_scores: list[float] = field(default_factory=list)  # best-of-k: the current batch's kept scores
    sampler_fn: guided.SPOSamplerFunction | None = None
    images_seen: int = 0  # postprocess_image calls in this batch (where the host has no p.batch_index)

    def skip(self, p, message: str, images: list[tuple[int, str]] | None = None) -> None:
        """SPO is off for `images` (None: the whole job) because of `message`: shown under the
        images and in the console (once), and written to those images' infotext as "SPO skipped"
        so API callers see it too."""
        if images is None:
            self.skipped_all = message
            p.extra_generation_params[KEY_SKIPPED] = message
        for key in images or []:
            self.fields[key] = {KEY_SKIPPED: message}
        if message in self.messages:
            return
        self.messages.append(message)
        p.comment(message)
        log.warning(message)
        print(message)


class SPOScript(scripts.Script):
    """Step-aware Preference Optimization at generation time: the "SPO" accordion."""

    def title(self):
        return "SPO"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        d = SPOSettings()
        choices = list_spm_files(spm_dir())
        eid = self.elem_id
        with InputAccordion(False, label="SPO: step-aware preference", elem_id=eid("enabled")) as enabled:
            with gr.Row():
                mode = gr.Radio(list(MODES), value=d.mode, label="Mode", elem_id=eid("mode"),
                                info="per-step: k candidates at each judged step, the SPM keeps one "
                                     "(≈ 1 + (k−1)·judged share × the model evaluations of plain sampling); "
                                     "best-of-k: k images per prompt, the best is kept (≈ k×); "
                                     "fk: k particles resampled by the SPM at the judged steps, the best kept (≈ k×)")
                spm = gr.Dropdown(choices, value=choices[0] if choices else None, allow_custom_value=True,
                                  label="Step-aware preference model (models/spo)", elem_id=eid("spm"))
                refresh = ToolButton(value="\U0001f504", elem_id=eid("refresh"))
                refresh.click(fn=lambda: gr.update(choices=list_spm_files(spm_dir())), inputs=[], outputs=[spm])
            with gr.Row():
                k = gr.Slider(2, K_MAX, value=d.k, step=1,
                              label="k (candidates per step / images per prompt / particles): ≈ k× the cost",
                              elem_id=eid("k"))
            with gr.Row():
                window_start = gr.Slider(0.0, 1.0, value=d.window_start, step=0.05,
                                         label="Branch from (fraction of steps)", elem_id=eid("window_start"))
                window_end = gr.Slider(0.0, 1.0, value=d.window_end, step=0.05, label="Branch until",
                                       elem_id=eid("window_end"))
            with gr.Row():
                selection = gr.Radio(list(SELECTIONS), value=d.selection, label="Selection", elem_id=eid("selection"))
                temperature = gr.Slider(0.01, 10.0, value=d.temperature, step=0.01, label="Softmax temperature",
                                        elem_id=eid("temperature"))
            with gr.Row():
                judge_every = gr.Slider(1, 20, value=d.judge_every, step=1,
                                        label="Judge every N steps (per-step, fk): fewer judged steps, fewer decodes",
                                        elem_id=eid("judge_every"))
                potential = gr.Radio(list(POTENTIALS), value=d.potential, label="fk potential",
                                     elem_id=eid("potential"))
                lam = gr.Slider(0.0, 50.0, value=d.lam, step=0.5, label="fk lambda (resampling sharpness)",
                                elem_id=eid("lam"))
            # each guided mode starts from the judged steps the bench measured for it
            mode.change(fn=lambda m: [gr.update(value=v) for v in MODE_WINDOWS.get(m, MODE_WINDOWS["per-step"])],
                        inputs=[mode], outputs=[window_start, window_end, judge_every])

        def window(i):
            return lambda params: SPOSettings.from_infotext(params).window[i] if KEY_MODE in params else None

        def restored(name):  # fields older images lack get the value those images were made with
            return lambda params: getattr(SPOSettings.from_infotext(params), name) if KEY_MODE in params else None

        # String keys also travel with "Send to img2img" (A1111 matches paste_field_names by key);
        # callables decide what a missing key means (no "SPO" in the infotext: switch SPO off).
        self.infotext_fields = [
            (enabled, lambda params: KEY_MODE in params),
            (mode, KEY_MODE),
            (spm, KEY_SPM),
            (k, KEY_K),
            (window_start, window(0)),
            (window_end, window(1)),
            (selection, KEY_SELECTION),
            (temperature, KEY_TEMPERATURE),
            (judge_every, restored("judge_every")),
            (potential, restored("potential")),
            (lam, restored("lam")),
        ]
        self.paste_field_names = [KEY_MODE, KEY_SPM, KEY_K, KEY_SELECTION, KEY_TEMPERATURE, KEY_POTENTIAL, KEY_LAMBDA]
        return [enabled, mode, spm, k, window_start, window_end, selection, temperature, judge_every, potential, lam]

    # ------------------------------------------------------------------ hooks

    def process(self, p, *args):
        settings = SPOSettings.from_args(*args)
        state = RunState(settings=settings, batch_size=p.batch_size)
        p.spo = state
        if not settings.enabled:
            return
        problem = settings.problem()
        if problem is not None:
            state.skip(p, problem)
            return
        try:
            state.spm = load_checked_spm(settings, p.sd_model)
        except SPMUnavailable as e:
            state.skip(p, str(e))
            return
        if settings.mode == "best-of-k" and not _expand_for_best_of_k(p, settings.k, state):
            return
        state.active = True
        if settings.mode in GUIDED_MODES and not compat.HAS_SAMPLING_HOOK:
            compat.run_before_sampling(p, lambda: self.process_before_every_sampling(p))

    def process_before_every_sampling(self, p, *args, **kwargs):
        state = getattr(p, "spo", None)
        if state is None or not state.active or state.settings.mode not in GUIDED_MODES or getattr(p, "is_hr_pass", False):
            return
        try:
            guided.preflight(state.spm, _spm_prompts(p))
        except Exception as e:  # e.g. a prompt the SPM's tokenizer rejects
            message = (f"SPO: the SPM cannot score this batch ({type(e).__name__}: {e}); "
                       "generated without SPO.")
            state.skip(p, message, _image_keys(p))
            state.sampler_fn = None
            return
        fn = guided.SPOSamplerFunction(
            settings=state.settings,
            spm=state.spm,
            prompts=_spm_prompts(p),
            decode=lambda x0: sd_samplers_common.samples_to_images_tensor(x0, 0, p.sd_model).float(),
            noise=p.rng.next,
            choice_generator=torch.Generator().manual_seed(int(p.seeds[0])),
            progress=lambda done, total: _show_progress(state.settings.mode, done, total),
        )
        _install_sampler_function(p, fn)
        state.sampler_fn = fn

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        state = getattr(p, "spo", None)
        if state is None or not state.active or not pp.images:
            return
        fn, state.sampler_fn = state.sampler_fn, None
        state.images_seen = 0
        if state.settings.mode in GUIDED_MODES:
            keys = _image_keys(p)
            if fn is None and any(key in state.fields for key in keys):
                return  # this batch ran without SPO (message already shown)
            if fn is None or fn.report.model_evals == 0:
                # never silent: the host did not reach the hook, or its sampler never called SPO's function
                state.skip(p, compat.PER_STEP_DID_NOT_RUN, keys)
                return
            if fn.report.error is not None:
                state.skip(p, fn.report.error, _image_keys(p))
                return
        try:
            images = _as_saved(pp.images) * 2 - 1
            t0 = torch.zeros(len(pp.images), dtype=torch.long)
            scores = guided.score_images(state.spm, images, _spm_prompts(p), t0)
        except Exception as e:
            scores, error = None, f"SPO: the SPM could not score the images ({type(e).__name__}: {e})."
        if state.settings.mode == "best-of-k":
            _keep_best_of_k(p, pp, scores, state)
        if scores is None:
            state.skip(p, error, _image_keys(p))
            return
        for i in range(len(pp.images)):
            score = scores[i] if state.settings.mode in GUIDED_MODES else state.kept_scores[i]
            fields = dict(state.settings.infotext())
            fields[KEY_SCORE] = f"{float(score):.4f}"
            state.fields[(int(p.seeds[i]), p.prompts[i])] = fields

    def postprocess_image(self, p, pp, *args):
        state = getattr(p, "spo", None)
        if state is None or not state.settings.enabled:
            return
        i = getattr(p, "batch_index", None)
        if i is None:  # a host that does not set p.batch_index: count the calls instead
            i = state.images_seen
        state.images_seen += 1
        try:
            key = (int(p.seeds[i]), p.prompts[i])
        except (IndexError, TypeError, ValueError):
            key = None
        _write_infotext_fields(p, state, state.fields.get(key))

    def postprocess(self, p, processed, *args):
        state = getattr(p, "spo", None)
        if state is None or not state.active or state.settings.mode != "best-of-k":
            return
        # the job's lists were k times longer while sampling; report the kept images only
        processed.all_prompts = state.kept["prompts"]
        processed.all_negative_prompts = state.kept["negative_prompts"]
        processed.all_seeds = state.kept["seeds"]
        processed.all_subseeds = state.kept["subseeds"]
        processed.batch_size = state.batch_size
        p.batch_size = state.batch_size


# ---------------------------------------------------------------------- helpers


def _show_progress(mode: str, done: int, total: int) -> None:
    """The judged steps in the WebUI's progress text (the step bar counts sampling steps)."""
    shared.state.textinfo = f"SPO {mode}: judged step {done}/{total}"


def _spm_prompts(p) -> list[str]:
    """The batch's prompts as the SPM reads them: WebUI markup (weights, LoRA tags, ...) removed."""
    return [plain_prompt(text) for text in p.prompts]


def _as_saved(images) -> torch.Tensor:
    """Images in [0, 1] as the WebUI saves them, `(255 · x).astype(uint8)`: the score in the infotext
    is then the SPM's score of the PNG (a small SPM moves by tenths for that half-level shift)."""
    return torch.floor(torch.stack([img.float() for img in images]).clamp(0, 1) * 255) / 255


def _image_keys(p) -> list[tuple[int, str]]:
    """(seed, prompt) of every image of the current batch."""
    return [(int(s), pr) for s, pr in zip(p.seeds, p.prompts)]


def _write_infotext_fields(p, state: RunState, fields: dict[str, str] | None) -> None:
    """Put one image's SPO fields (plain strings) into p.extra_generation_params, which the
    WebUI turns into that image's infotext right after postprocess_image; no fields: only the
    job's "SPO skipped" reason, if any. (A1111 accepts per-image callables there only from 1.10.)"""
    for key in INFOTEXT_KEYS:
        p.extra_generation_params.pop(key, None)
    if fields is None:
        fields = {KEY_SKIPPED: state.skipped_all} if state.skipped_all else {}
    p.extra_generation_params.update(fields)


def _install_sampler_function(p, fn) -> None:
    """Make the sampler about to run call `fn` on its own sigmas.

    A k-diffusion sampler (Euler a, DPM++ 2M, LCM, ...) keeps its scheduler (Karras, ...);
    DDIM, PLMS and UniPC step in timesteps, so they are replaced by a k-diffusion sampler on
    the model's default sigmas.
    """
    sampler = p.sampler
    if not isinstance(sampler, sd_samplers_kdiffusion.KDiffusionSampler):
        name = getattr(getattr(sampler, "config", None), "name", "?")
        sampler = sd_samplers_kdiffusion.KDiffusionSampler(fn, p.sd_model)
        sampler.config = sd_samplers_common.SamplerData(f"SPO ({name})", None, [], {})
        p.sampler = sampler
    sampler.func = fn


def _expand_for_best_of_k(p, k: int, state: RunState) -> bool:
    """k copies of every image of the job, each group of k contiguous in its batch.

    Copy m of the image with seed s gets seed s + m·N (N images in the job): copy 0 is the
    image SPO-off generation gives, so best-of-k never keeps a worse one by the SPM.
    """
    if getattr(p, "init_images", None) and len(p.init_images) > 1:
        state.skip(p, "SPO: best-of-k works with one init image; generated without SPO.")
        return False
    n = len(p.all_prompts)

    def rep(values):
        return [v for v in values for _ in range(k)]

    p.all_prompts = rep(p.all_prompts)
    p.all_negative_prompts = rep(p.all_negative_prompts)
    p.all_seeds = [int(s) + m * n for s in p.all_seeds for m in range(k)]
    p.all_subseeds = rep(p.all_subseeds)
    for name in ("all_hr_prompts", "all_hr_negative_prompts"):
        if getattr(p, name, None):
            setattr(p, name, rep(getattr(p, name)))
    p.batch_size = p.batch_size * k
    return True


def _keep_best_of_k(p, pp, scores, state: RunState) -> None:
    """Keep the best image of each group of k in this batch (the first when there are no scores)."""
    from spo_studio.spo.strategies import best_per_sample

    k = state.settings.k
    groups = len(pp.images) // k
    # groups of k are contiguous here; best_per_sample wants trajectory-major [k, groups]
    best = [0] * groups if scores is None else best_per_sample(scores[: groups * k].reshape(groups, k).T).tolist()
    keep = [g * k + int(b) for g, b in enumerate(best)]
    kept_scores = [None if scores is None else float(scores[i]) for i in keep]
    pp.images = [pp.images[i] for i in keep]
    for name in ("prompts", "negative_prompts", "seeds", "subseeds"):
        values = [getattr(p, name)[i] for i in keep]
        setattr(p, name, values)
        state.kept[name].extend(values)
    state.kept_scores = kept_scores
