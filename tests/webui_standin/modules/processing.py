"""modules.processing: the txt2img job and its infotext, with A1111's order of script hooks.

process_images: before_process -> prompts and seeds -> process -> per batch: prompts/seeds
slices, per-seed rng, before_process_batch, process_batch, conds, sample (create sampler,
x_T = rng.next(), process_before_every_sampling, sampler.sample) -> decode -> clamp to [0, 1]
-> postprocess_batch -> postprocess_batch_list -> per image: p.batch_index, postprocess_image,
its infotext -> Processed -> postprocess.

`set_webui_version` switches between what differs across A1111 1.8 … 1.10 (see there).
"""
import json

import numpy as np
import torch
from PIL import Image

from modules import infotext_utils, rng, scripts, sd_samplers, shared

opt_f = 8
WEBUI_VERSION = (1, 10)
_sampling_hooks = (scripts.Script.process_before_every_sampling, scripts.ScriptRunner.process_before_every_sampling)


def set_webui_version(version: tuple) -> None:
    """Behave like A1111 `version`: before 1.9 there is no process_before_every_sampling hook
    (neither on Script nor on the runner); before 1.10 extra_generation_params values are
    written into the infotext as they are (a callable as its repr) and Processed.js() fails
    on anything json cannot serialise (the API's HTTP 500)."""
    global WEBUI_VERSION
    WEBUI_VERSION = tuple(version)
    for cls, hook in zip((scripts.Script, scripts.ScriptRunner), _sampling_hooks):
        if WEBUI_VERSION >= (1, 9):
            cls.process_before_every_sampling = hook
        elif "process_before_every_sampling" in cls.__dict__:
            delattr(cls, "process_before_every_sampling")


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        if WEBUI_VERSION < (1, 10):
            break  # lists and callables are 1.10's
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            generation_params[key] = None
    text = ", ".join(k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in generation_params.items() if v is not None)
    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_prompt_text}\n{text}".strip()


class StableDiffusionProcessing:
    def __init__(self, prompt="", negative_prompt="", seed=-1, sampler_name="Euler a", scheduler="Automatic",
                 batch_size=1, n_iter=1, steps=20, cfg_scale=5.0, width=64, height=64, eta=None,
                 sd_model=None, script_args=None, scripts_runner=None):
        self.prompt, self.negative_prompt, self.seed = prompt, negative_prompt, seed
        self.subseed, self.subseed_strength = -1, 0.0
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.batch_size, self.n_iter, self.steps, self.cfg_scale = batch_size, n_iter, steps, cfg_scale
        self.width, self.height, self.eta = width, height, eta
        self.sd_model = sd_model if sd_model is not None else shared.sd_model
        self.scripts = scripts_runner
        self.script_args = script_args or []
        self.extra_generation_params = {}
        self.comments = {}
        self.is_hr_pass = False
        self.sampler = None
        self.iteration = 0

    def comment(self, text):
        self.comments[text] = 1

    def setup_prompts(self):
        self.all_prompts = self.prompt if isinstance(self.prompt, list) else self.batch_size * self.n_iter * [self.prompt]
        self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        self.main_prompt, self.main_negative_prompt = self.all_prompts[0], self.all_negative_prompts[0]

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def setup_conds(self):
        self.c = self.sd_model.get_learned_conditioning(self.prompts)
        self.uc = self.sd_model.get_learned_conditioning(self.negative_prompts)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        if self.scripts is not None and WEBUI_VERSION >= (1, 9):
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
        return self.sampler.sample(self, x, conditioning, unconditional_conditioning)


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img: the sampler is made in init() (before process_before_every_sampling), the init
    image is encoded once and repeated for the batch, sampling starts part-way (denoising strength)."""

    def __init__(self, init_images=None, denoising_strength=0.75, **kwargs):
        super().__init__(**kwargs)
        self.init_images = init_images or []
        self.denoising_strength = denoising_strength

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        if len(self.init_images) != 1:
            raise RuntimeError(f"stand-in: one init image, got {len(self.init_images)}")
        arr = np.asarray(self.init_images[0].convert("RGB"), dtype=np.float32) / 127.5 - 1
        image = torch.from_numpy(arr).permute(2, 0, 1)[None].repeat(self.batch_size, 1, 1, 1)
        self.init_latent = self.sd_model.encode_first_stage(image)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.rng.next()
        if self.scripts is not None and WEBUI_VERSION >= (1, 9):
            self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        return self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning)


class Processed:
    def __init__(self, p, images_list, infotexts=None):
        self.images = images_list
        self.prompt, self.all_prompts = p.prompt, p.all_prompts
        self.all_negative_prompts = p.all_negative_prompts
        self.all_seeds, self.all_subseeds = p.all_seeds, p.all_subseeds
        self.batch_size = p.batch_size
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.extra_generation_params = p.extra_generation_params
        self.infotexts = infotexts or []
        self.info = self.infotexts[0] if self.infotexts else ""

    def js(self):
        """What the API returns as `info` (a part of A1111's object)."""
        obj = {"prompt": self.all_prompts[0], "all_prompts": self.all_prompts, "all_seeds": self.all_seeds,
               "batch_size": self.batch_size, "extra_generation_params": self.extra_generation_params,
               "infotexts": self.infotexts}
        if WEBUI_VERSION < (1, 10):
            return json.dumps(obj)
        return json.dumps(obj, default=lambda o: None)


def process_images(p) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    p.setup_prompts()
    seed = int(p.seed)
    p.all_seeds = [seed + x for x in range(len(p.all_prompts))]
    p.all_subseeds = [seed + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts, output_images = [], []
    with torch.no_grad():
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        for n in range(p.n_iter):
            p.iteration = n
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
            latent_channels = getattr(shared.sd_model, "latent_channels", 4)
            p.rng = rng.ImageRNG((latent_channels, p.height // opt_f, p.width // opt_f), p.seeds)
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()
            samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds,
                               subseed_strength=p.subseed_strength, prompts=p.prompts)
            x_samples = torch.stack(list(p.sd_model.decode_first_stage(samples))).float()
            x_samples = torch.clamp((x_samples + 1.0) / 2.0, min=0.0, max=1.0)
            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples, batch_number=n)
                p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
                p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
                batch_params = scripts.PostprocessBatchListArgs(list(x_samples))
                p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                x_samples = batch_params.images

            def infotext(index=0, use_main_prompt=False):
                return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt, index=index,
                                       all_negative_prompts=p.negative_prompts)

            for i, x_sample in enumerate(x_samples):
                p.batch_index = i
                arr = (255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
                image = Image.fromarray(arr)
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                text = infotext(i)
                infotexts.append(text)
                image.info["parameters"] = text
                output_images.append(image)
    res = Processed(p, output_images, infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
