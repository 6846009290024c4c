"""The step-aware preference model: a CLIP (PickScore) whose vision tower is conditioned on t.

Built from transformers' `CLIPModel`; only three things are added, named so the state dict
matches the released checkpoints (keys under a `model.` prefix):

    model.t_embedder.mlp.{0,2}                     DiT timestep embedder, c = MLP(sinusoid(t))
    model.vision_model.encoder.layers.{i}.adaLN_modulation.1
                                                   SiLU → Linear(D, 6D): shift/scale/gate per branch
    model.vision_model.adaLN_modulation.1          SiLU → Linear(D, 2D): shift/scale of the pooled token

Each vision layer computes (DiT's adaLN-Zero block with CLIP's pre-LN layers)

    h = x + gate_msa · Attn(LN1(x)·(1 + scale_msa) + shift_msa)
    y = h + gate_mlp · MLP(LN2(h)·(1 + scale_mlp) + shift_mlp)

and the pooled CLS token becomes post_LN(cls)·(1 + scale) + shift. With the adaLN weights
zero, their biases zero except the gates (one), the model is exactly the base CLIP for
every t: an untrained SPM scores like its base model.

`step_aware=False` gives the step-agnostic variant: the base CLIP behind the same API,
timesteps accepted and ignored.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .errors import SPMError
from .preprocess import PreprocessConfig, clip_preprocess

NUM_TRAIN_TIMESTEPS = 1000


def timestep_features(timesteps: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of integer timesteps, [cos | sin] halves (DiT / GLIDE convention).

    timesteps: Tensor[B] (integers in [0, 1000), any dtype). Returns Tensor[B, dim] float32:
        f_k = max_period^(−k/(dim/2)),  features = [cos(t·f_0..), sin(t·f_0..)]
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        feats = torch.cat([feats, torch.zeros_like(feats[:, :1])], dim=-1)
    return feats


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x·(1 + scale) + shift, with x [B, N, D] and shift/scale [B, D] broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """t -> c: Linear(256, D) → SiLU → Linear(D, D) on sinusoidal features. Output Tensor[B, D]."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(timesteps, self.frequency_dim)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


def _adaln(hidden_size: int, chunks: int, gate_chunks: tuple[int, ...]) -> nn.Sequential:
    """SiLU → Linear(D, chunks·D), initialised to the identity modulation (gates 1, all else 0)."""
    lin = nn.Linear(hidden_size, chunks * hidden_size)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        for g in gate_chunks:
            lin.bias[g * hidden_size : (g + 1) * hidden_size] = 1.0
    return nn.Sequential(nn.SiLU(), lin)


class AdaLNEncoderLayer(nn.Module):
    """A CLIP encoder layer with adaLN modulation; adopts the layer's own submodules.

    Taking over `self_attn`, `layer_norm1`, `mlp`, `layer_norm2` of an existing
    `CLIPEncoderLayer` keeps its parameter names (and its weights) and allocates nothing new
    but the modulation. Chunk order of the modulation output, as in DiT and the released
    files: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.embed_dim = layer.embed_dim
        self.self_attn = layer.self_attn
        self.layer_norm1 = layer.layer_norm1
        self.mlp = layer.mlp
        self.layer_norm2 = layer.layer_norm2
        self.adaLN_modulation = _adaln(self.embed_dim, 6, gate_chunks=(2, 5))

    def forward(self, hidden_states: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """hidden_states [B, N, D], cond [B, D] -> [B, N, D]."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(cond).chunk(6, dim=-1)
        h = modulate(self.layer_norm1(hidden_states), shift_msa, scale_msa)
        h = self.self_attn(hidden_states=h)[0]
        hidden_states = hidden_states + gate_msa.unsqueeze(1) * h
        h = self.mlp(modulate(self.layer_norm2(hidden_states), shift_mlp, scale_mlp))
        return hidden_states + gate_mlp.unsqueeze(1) * h


class StepAwarePreferenceModel(nn.Module):
    """SPM: `.model` is a transformers CLIPModel, extended in place when step-aware.

    config: a `transformers.CLIPConfig`; clip: an existing CLIPModel to extend instead (its
    weights are kept, e.g. PickScore's). State dict keys: `model.` + the released names.
    Besides the network it carries what scoring needs: a tokenizer (or where to load one
    from), the preprocessing settings, and the model family it was trained for when known.
    """

    def __init__(
        self,
        config=None,
        step_aware: bool = True,
        frequency_dim: int = 256,
        clip: nn.Module | None = None,
        preprocess: PreprocessConfig | None = None,
        tokenizer=None,
        family: str | None = None,
    ):
        super().__init__()
        from transformers import CLIPModel

        self.step_aware = step_aware
        self.frequency_dim = frequency_dim
        self.family = family
        self.tokenizer = tokenizer  # a CLIPTokenizer, or a path / hub id loaded on first use
        self.training_record: dict | None = None  # how it was trained, when read from our format
        self.preprocess = preprocess or PreprocessConfig(image_size=(clip.config if clip is not None else config).vision_config.image_size)
        self.model = clip if clip is not None else CLIPModel(config)
        if step_aware:
            vision = self.model.vision_model
            hidden = vision.config.hidden_size
            layers = vision.encoder.layers
            for i in range(len(layers)):
                layers[i] = AdaLNEncoderLayer(layers[i])
            vision.adaLN_modulation = _adaln(hidden, 2, gate_chunks=())
            self.model.t_embedder = TimestepEmbedder(hidden, frequency_dim)
            # DiT's init for the embedder; it cannot change outputs at init (adaLN weights are zero).
            nn.init.normal_(self.model.t_embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(self.model.t_embedder.mlp[2].weight, std=0.02)
            nn.init.zeros_(self.model.t_embedder.mlp[0].bias)
            nn.init.zeros_(self.model.t_embedder.mlp[2].bias)

    @property
    def config(self):
        return self.model.config

    def image_embeds(self, pixel_values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings (not normalised). pixel_values [B, 3, S, S] (CLIP-normalised),
        timesteps [B] long -> Tensor[B, P]."""
        vision = self.model.vision_model
        if not self.step_aware:
            pooled = vision(pixel_values=pixel_values.to(self.dtype)).pooler_output
            return self.model.visual_projection(pooled)
        cond = self.model.t_embedder(timesteps)
        h = vision.pre_layrnorm(vision.embeddings(pixel_values.to(self.dtype)))
        for layer in vision.encoder.layers:
            h = layer(h, cond)
        shift, scale = vision.adaLN_modulation(cond).chunk(2, dim=-1)
        pooled = vision.post_layernorm(h[:, 0]) * (1 + scale) + shift
        return self.model.visual_projection(pooled)

    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text embeddings (not normalised): input_ids [N, L] -> Tensor[N, P]."""
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 4.x returns the tensor

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    # -- own format (trainer.spm.weights does the I/O) ----------------------------------------------
    def save_pretrained(self, out_dir, training: dict | None = None):
        """Write model.safetensors + config.json (+ tokenizer/) to out_dir; see weights.save_pretrained."""
        from .weights import save_pretrained

        return save_pretrained(self, out_dir, training)

    @classmethod
    def from_pretrained(cls, root, device="cpu", dtype: torch.dtype = torch.float32, tokenizer=None):
        """Read a directory written by save_pretrained."""
        from .weights import from_pretrained

        return from_pretrained(root, device, dtype, tokenizer)

    # -- scoring ----------------------------------------------------------------------------------
    def get_tokenizer(self):
        """The CLIP tokenizer, loaded on first use when only its location is known."""
        if self.tokenizer is None or isinstance(self.tokenizer, (str, bytes)) or hasattr(self.tokenizer, "__fspath__"):
            from transformers import CLIPTokenizer

            source = self.tokenizer
            if source is None:
                raise SPMError("this SPM has no tokenizer: pass tokenizer=<CLIP tokenizer dir or hub id> to load_spm")
            try:
                self.tokenizer = CLIPTokenizer.from_pretrained(str(source))
            except (OSError, ValueError) as e:
                raise SPMError(
                    f"cannot load the SPM's CLIP tokenizer from {source} ({str(e).splitlines()[0][:120]}); "
                    "pass tokenizer=<local CLIP tokenizer dir> or convert with --tokenizer"
                ) from None
        return self.tokenizer

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, Tensor[N, P], for N prompts (gradients allowed)."""
        tok = self.get_tokenizer()
        max_len = min(tok.model_max_length, self.model.config.text_config.max_position_embeddings)
        enc = tok(list(prompts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        device = self.model.logit_scale.device
        emb = self.text_embeds(enc.input_ids.to(device), enc.attention_mask.to(device))
        return emb / emb.norm(dim=-1, keepdim=True)

    def encode_images(self, images: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings, Tensor[B, P], of images [B, 3, H, W] in [−1, 1] at
        timesteps [B] (gradients allowed; preprocessing runs on the images' device)."""
        device = self.model.logit_scale.device
        pixels = clip_preprocess(images.to(device), self.preprocess)
        emb = self.image_embeds(pixels, timesteps.to(device))
        return emb / emb.norm(dim=-1, keepdim=True)

    def forward(self, images: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor) -> torch.Tensor:
        """logit_scale.exp() · cos(image, text): Tensor[B] float32, differentiable (training).

        Each distinct prompt is encoded once and shared by every image that carries it.
        """
        unique = list(dict.fromkeys(prompts))
        index = torch.tensor([unique.index(p) for p in prompts], device=self.model.logit_scale.device)
        text = self.encode_text(unique)[index]
        image = self.encode_images(images, timesteps)
        return (self.model.logit_scale.exp() * (image * text).sum(dim=-1)).float()

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: Sequence[str], timesteps) -> torch.Tensor:
        """The project's scorer signature: Tensor[B] float32, higher = better.

        images: Tensor[B, 3, H, W] in [−1, 1] as decoded, overshoot allowed (any size; resized,
        cropped and clamped here as the checkpoint's preprocess.method says);
        prompts: B non-empty strings; timesteps: int or Tensor[B] of integers in [0, 1000),
        the step the images come from (0 = clean). Ignored by a step-agnostic model.
        """
        t = check_score_inputs(images, prompts, timesteps)
        return self.forward(images, prompts, t)


def check_score_inputs(images: torch.Tensor, prompts: Sequence[str], timesteps) -> torch.Tensor:
    """Validate a score() call; returns timesteps as Tensor[B] long. Raises a one-line ValueError."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise SPMError(f"SPM score: images must be a Tensor[B, 3, H, W] in [-1, 1], got {shape}")
    if not images.is_floating_point():
        raise SPMError(f"SPM score: images must be floating point in [-1, 1], got dtype {images.dtype}")
    b = images.shape[0]
    if b == 0:
        raise SPMError("SPM score: empty batch")
    # Decoded x̂0 overshoots [−1, 1] and reaches the scorer unclamped, as in the reference;
    # the preprocessing clamps where the checkpoint's recipe clamps. Only non-finite values are refused.
    if not bool(torch.isfinite(images).all()):
        raise SPMError("SPM score: images contain NaN or infinite values (decoded VAE output expected)")
    if isinstance(prompts, str) or len(prompts) != b:
        n = "a single string" if isinstance(prompts, str) else len(prompts)
        raise SPMError(f"SPM score: need one prompt per image ({b}), got {n}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise SPMError(f"SPM score: prompt {i} is empty; every image needs a non-empty prompt")
    t = torch.as_tensor(timesteps)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise SPMError("SPM score: timesteps must be integers in [0, 1000)")
    t = t.long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b:
        raise SPMError(f"SPM score: need one timestep per image ({b}) or a single one, got {t.numel()}")
    if int(t.min()) < 0 or int(t.max()) >= NUM_TRAIN_TIMESTEPS:
        raise SPMError(f"SPM score: timesteps must be in [0, {NUM_TRAIN_TIMESTEPS}), got {int(t.min())}..{int(t.max())}")
    return t
