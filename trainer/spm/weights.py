"""Reading and writing SPM weights: the released checkpoints and this project's own format.

Released (hub `SPO-Diffusion-Models/Step-Aware_Preference_Models`): a full fp32 state dict of
a wrapper module, keys `model.*`, as `.bin` (a torch zip pickle: read with
`weights_only=True`, nothing but tensors is accepted) or the same dict as `.safetensors`.
No config travels with them; the CLIP-H architecture ships with this package
(`clip_vit_h14.json`). Files made with transformers 4.27 also hold the two
`embeddings.position_ids` buffers that newer transformers no longer saves: they are
checked (must be 0..n−1) and dropped, or, under a transformers that still
saves them (< 4.31), filled in whether the file has them or not.

Own format: a directory with `model.safetensors` (same `model.*` keys) and `config.json`
(architecture, preprocessing, step-aware flag, model family, training record), plus a
`tokenizer/` folder when the tokenizer was available when it was saved.
"""
from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path, write_text
from ..families import family_from_spm_filename
from ..scorers.files import key_mismatch
from .errors import SPMError
from .model import StepAwarePreferenceModel
from .preprocess import PreprocessConfig

SHIPPED_CONFIG = Path(__file__).with_name("clip_vit_h14.json")
FORMAT = "spo-studio-spm"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
LEGACY_BUFFERS = ("model.text_model.embeddings.position_ids", "model.vision_model.embeddings.position_ids")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def _shipped() -> dict:
    return json.loads(SHIPPED_CONFIG.read_text())


def clip_h14_config():
    """The CLIP ViT-H/14 (PickScore_v1) `CLIPConfig`, built offline from the shipped JSON."""
    from transformers import CLIPConfig

    c = _shipped()["clip"]
    return CLIPConfig(text_config=c["text_config"], vision_config=c["vision_config"],
                      projection_dim=c["projection_dim"], logit_scale_init_value=c["logit_scale_init_value"])


def clip_h14_preprocess() -> PreprocessConfig:
    return PreprocessConfig.from_dict(_shipped()["preprocess"])


def default_tokenizer_source() -> str:
    """Hub id of PickScore's tokenizer (the laion CLIP-H one); loaded only when text is scored."""
    return _shipped()["tokenizer"]["hub_id"]


def family_from_filename(name: str | os.PathLike) -> str | None:
    """'sd15' / 'sdxl' from the released file names (sd-v1-5_…, sdxl_…), else None."""
    return family_from_spm_filename(Path(name).name)  # the prefixes are in the family table


# -- reading state dicts ----------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a `.bin`/`.pt` (weights-only unpickling) or `.safetensors` file, on CPU.

    Raises ValueError with one line for a missing, truncated or non-weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise SPMError(f"{path}: no such SPM checkpoint file")
    if path.suffix in (".safetensors", ".sft"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises several error types for a damaged header
            raise SPMError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:160]})") from None
    if path.stat().st_size == 0:
        raise SPMError(f"{path}: empty file (0 bytes); download the SPM checkpoint again")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: one line is ours
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, i.e. running the file's code: never repeat it
        raise SPMError(f"{path}: refused, it holds objects other than tensors, which are never unpickled here "
                       "(they can run code); use a checkpoint that holds only weights, or its .safetensors") from None
    except Exception as e:  # truncated zip, EOF, bad magic: torch raises many types for a damaged file
        first = _strip_hints(str(e))
        raise SPMError(f"{path}: not a readable torch checkpoint, truncated or damaged ({first})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SPMError(f"{path}: expected a state dict (name -> tensor), found a {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SPMError(f"{path}: entry {bad[0]!r} is not a tensor; an SPM checkpoint holds only tensors")
    return obj


def _strip_hints(text: str) -> str:
    """First line of an error, without any advice to turn weights_only off."""
    first = (text.strip().splitlines() or [""])[0][:160]
    return "refused to unpickle" if "weights_only" in first else first


def check_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Strict match of `state` against `model`'s keys and shapes; returns it without legacy buffers.

    Every model key must be present with its shape and no other key may appear, except the two
    transformers-4.27 `position_ids` buffers, which must equal 0..n−1; where the running
    transformers keeps them in the state dict, they are supplied as 0..n−1.
    """
    state = dict(state)
    expected = model.state_dict()
    for key in LEGACY_BUFFERS:
        if key in state:
            ids = state.pop(key)
            if not torch.equal(ids.reshape(-1).long(), torch.arange(ids.numel())):
                raise SPMError(f"{path}: legacy buffer {key} is not 0..{ids.numel() - 1}; the file is damaged")
        if key in expected:
            # transformers < 4.31 (A1111 1.8 pins 4.30.2) saves position_ids: fill them in, with or without the file
            state[key] = torch.arange(expected[key].numel()).reshape(expected[key].shape)
    if not any(k.startswith("model.") for k in state):
        raise SPMError(f"{path}: no 'model.*' keys; not an SPM checkpoint in the released layout")
    mismatch = key_mismatch(expected, state)
    if mismatch:
        raise SPMError(f"{path}: keys do not match this SPM architecture: {mismatch}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise SPMError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)} (a different CLIP size?)")
    return state


def _reset_position_ids(spm: StepAwarePreferenceModel, device) -> None:
    """Recreate the non-persistent position_ids buffers (left on the meta device by a meta build)."""
    for emb in (spm.model.text_model.embeddings, spm.model.vision_model.embeddings):
        n = emb.position_embedding.weight.shape[0]
        emb.register_buffer("position_ids", torch.arange(n, device=device).expand((1, -1)), persistent=False)


def build_from_state(
    state: dict[str, torch.Tensor],
    config,
    path: str | os.PathLike,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    **attrs: Any,
) -> StepAwarePreferenceModel:
    """An SPM whose architecture follows `config` and the keys (t_embedder present = step-aware),
    filled strictly from `state`, without allocating random weights first. A bare CLIPModel
    state dict (no `model.` prefix, e.g. PickScore's own pytorch_model.bin) is the step-agnostic model."""
    if "logit_scale" in state and not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}  # a bare CLIPModel state dict (PickScore's own file)
    step_aware = any(k.startswith("model.t_embedder.") for k in state)
    frequency_dim = int(state["model.t_embedder.mlp.0.weight"].shape[1]) if step_aware else 256
    with torch.device("meta"):
        spm = StepAwarePreferenceModel(config, step_aware=step_aware, frequency_dim=frequency_dim, **attrs)
    state = check_state_dict(state, spm, path)
    spm.load_state_dict(state, strict=True, assign=True)
    _reset_position_ids(spm, "cpu")
    return spm.to(device=device, dtype=dtype).eval().requires_grad_(False)


# -- the two formats -----------------------------------------------------------------------------------
def load_released(
    path: str | os.PathLike,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    config=None,
    preprocess: PreprocessConfig | None = None,
    tokenizer=None,
    family: str | None = None,
) -> StepAwarePreferenceModel:
    """A released `.bin` / `.safetensors` SPM. config: a CLIPConfig (default: shipped CLIP-H);
    family: default from the file name; tokenizer: CLIPTokenizer, dir or hub id (default: PickScore's)."""
    config = config if config is not None else clip_h14_config()
    if preprocess is None:  # PickScore's normalisation at the tower's input size, the reference's resize recipe
        shipped = clip_h14_preprocess()
        preprocess = PreprocessConfig(config.vision_config.image_size, shipped.image_mean, shipped.image_std, method="spo")
    state = read_state_dict(path)
    return build_from_state(
        state, config, path, device, dtype,
        preprocess=preprocess,
        tokenizer=tokenizer if tokenizer is not None else default_tokenizer_source(),
        family=family if family is not None else family_from_filename(path),
    )


def save_pretrained(spm: StepAwarePreferenceModel, out_dir: str | os.PathLike, training: dict | None = None) -> Path:
    """Write `spm` in the project's format: model.safetensors + config.json (+ tokenizer/).

    Files are written under temporary names and moved into place, config.json last, so a
    reader never sees a half-written model.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_ref = None
    tok = spm.tokenizer
    if isinstance(tok, (str, os.PathLike)) and Path(tok).is_dir():
        tok = spm.get_tokenizer()  # a local tokenizer travels with the model; a hub id is recorded
    if tok is not None and not isinstance(tok, (str, os.PathLike)):
        tok.save_pretrained(str(out / "tokenizer"))
        write_slow_tokenizer_files(out / "tokenizer")
        tokenizer_ref = "tokenizer"
    elif tok is not None:
        tokenizer_ref = str(tok)
    state = {k: v.detach().contiguous().cpu() for k, v in spm.state_dict().items()}
    meta = {"format": FORMAT, "step_aware": str(spm.step_aware), "family": str(spm.family)}
    with atomic_path(out / WEIGHTS_NAME) as tmp:  # mode from the umask; no temporary left on failure
        save_file(state, str(tmp), metadata=meta)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step_aware": spm.step_aware,
        "frequency_dim": spm.frequency_dim,
        "family": spm.family,
        "dtype": str(spm.dtype).removeprefix("torch."),
        "clip": spm.model.config.to_diff_dict(),
        "preprocess": spm.preprocess.to_dict(),
        "tokenizer": tokenizer_ref,
        "training": training,
    }
    write_text(out / CONFIG_NAME, json.dumps(config, indent=2, default=str))
    return out


def write_slow_tokenizer_files(folder: str | os.PathLike) -> list[str]:
    """vocab.json and merges.txt beside a BPE tokenizer.json, derived from it; returns the names written.

    transformers 5 saves a CLIP tokenizer as tokenizer.json only, but transformers 4 (A1111 pins
    4.30) loads `CLIPTokenizer` from vocab.json + merges.txt: a saved SPM must carry both forms.
    Existing files are kept; a folder without a BPE tokenizer.json is left alone.
    """
    folder = Path(folder)
    fast = folder / "tokenizer.json"
    if not fast.is_file():
        return []
    model = json.loads(fast.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE":
        return []
    written = []
    if not (folder / "vocab.json").is_file():
        write_text(folder / "vocab.json", json.dumps(model["vocab"], ensure_ascii=False))
        written.append("vocab.json")
    if not (folder / "merges.txt").is_file():
        # tokenizers writes merges as "a b" strings (< 0.20) or [a, b] pairs; the slow file has one "a b" a line
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        write_text(folder / "merges.txt", "#version: 0.2\n" + "".join(m + "\n" for m in merges))
        written.append("merges.txt")
    return written


def read_spm_config(root: str | os.PathLike) -> dict | None:
    """The config.json of an own-format SPM directory, or None when `root` is not one."""
    cfg_path = Path(root) / CONFIG_NAME
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise SPMError(f"{cfg_path}: not valid JSON ({e.msg})") from None
    return cfg if isinstance(cfg, dict) and cfg.get("format") == FORMAT else None


def from_pretrained(root: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32, tokenizer=None) -> StepAwarePreferenceModel:
    """Read an own-format SPM directory written by `save_pretrained`."""
    from transformers import CLIPConfig

    root = Path(root)
    cfg = read_spm_config(root)
    if cfg is None:
        raise SPMError(f"{root}: not an spo-studio SPM directory ({CONFIG_NAME} with format {FORMAT!r} missing)")
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise SPMError(f"{root}: SPM format version {cfg['format_version']} is newer than this spo-studio reads; upgrade")
    clip_cfg = cfg.get("clip")
    if not isinstance(clip_cfg, dict) or not isinstance(cfg.get("preprocess"), dict):
        missing = "clip" if not isinstance(clip_cfg, dict) else "preprocess"
        raise SPMError(f"{root / CONFIG_NAME}: no {missing!r} section; the SPM directory is damaged, convert or save it again")
    config = CLIPConfig(
        text_config=clip_cfg.get("text_config"), vision_config=clip_cfg.get("vision_config"),
        **{k: v for k, v in clip_cfg.items() if k in ("projection_dim", "logit_scale_init_value")},
    )
    if tokenizer is None and cfg.get("tokenizer"):
        local = root / cfg["tokenizer"]
        tokenizer = str(local) if local.is_dir() else cfg["tokenizer"]
    state = read_state_dict(root / WEIGHTS_NAME)
    spm = build_from_state(
        state, config, root / WEIGHTS_NAME, device, dtype,
        preprocess=PreprocessConfig.from_dict(cfg["preprocess"]), tokenizer=tokenizer, family=cfg.get("family"),
    )
    if spm.step_aware != bool(cfg.get("step_aware", True)):
        raise SPMError(f"{root}: config.json says step_aware={cfg.get('step_aware')} but the weights say otherwise")
    spm.training_record = cfg.get("training")
    return spm


def spm_from_clip(
    source, step_aware: bool = True, device="cpu", dtype: torch.dtype = torch.float32, family: str | None = None
) -> StepAwarePreferenceModel:
    """An SPM initialised from a CLIP (e.g. PickScore, or ShapesWorld's small CLIP): identity adaLN,
    so it scores exactly like the CLIP. source: a CLIPModel, or a transformers CLIPModel directory
    (its tokenizer and CLIPImageProcessor settings are used when found there or in tokenizer/)."""
    from transformers import CLIPModel

    tokenizer, preprocess = None, None
    if not isinstance(source, torch.nn.Module):
        root = Path(source)
        try:
            clip = CLIPModel.from_pretrained(str(root), torch_dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise SPMError(f"{root}: cannot load a CLIPModel ({str(e).splitlines()[0][:160]})") from None
        for cand in (root / "tokenizer", root):
            if any((cand / name).is_file() for name in TOKENIZER_FILES):
                tokenizer = str(cand)
                break
        preprocess = _processor_settings(root, clip.config.vision_config.image_size)
    else:
        clip = source
    spm = StepAwarePreferenceModel(clip=clip, step_aware=step_aware, preprocess=preprocess, tokenizer=tokenizer, family=family)
    return spm.to(device=device, dtype=dtype)


def _processor_settings(root: Path, image_size: int) -> PreprocessConfig:
    """Crop size, mean and std from a preprocessor_config.json when present, else OpenAI CLIP's;
    the CLIPImageProcessor recipe."""
    # A plain CLIP folder (PickScore-style) was trained on what CLIPImageProcessor makes of a picture.
    p = root / "preprocessor_config.json"
    if not p.is_file():
        return PreprocessConfig(image_size=image_size, method="clip")
    cfg = json.loads(p.read_text())
    crop = cfg.get("crop_size", image_size)
    crop = crop.get("height", image_size) if isinstance(crop, dict) else crop
    base = PreprocessConfig()
    return PreprocessConfig(
        int(crop), tuple(cfg.get("image_mean", base.image_mean)), tuple(cfg.get("image_std", base.image_std)), method="clip"
    )


def load_spm(
    path: str | os.PathLike,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    *,
    config=None,
    tokenizer=None,
    family: str | None = None,
) -> StepAwarePreferenceModel:
    """Load an SPM for scoring: a released `.bin`/`.safetensors` file, an own-format directory
    (or its model.safetensors), or a transformers CLIPModel directory (PickScore: step-agnostic).
    Returns it in eval mode.

    config: CLIPConfig for released files of another size than CLIP-H (tests, ShapesWorld);
    tokenizer: overrides where the tokenizer comes from; family: overrides the recorded/hinted one.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if read_spm_config(p) is not None:
            spm = from_pretrained(p, device, dtype, tokenizer)
        elif (p / CONFIG_NAME).is_file():
            spm = spm_from_clip(p, step_aware=False, device=device, dtype=dtype)
            if tokenizer is not None:
                spm.tokenizer = tokenizer
        else:
            raise SPMError(f"{p}: neither an SPM directory nor a CLIP model directory (no {CONFIG_NAME})")
    elif p.is_file() and p.name == WEIGHTS_NAME and read_spm_config(p.parent) is not None:
        spm = from_pretrained(p.parent, device, dtype, tokenizer)  # the weights file of an own-format dir
    elif p.is_file():
        spm = load_released(p, device, dtype, config=config, tokenizer=tokenizer, family=family)
    else:
        raise SPMError(f"{p}: no such SPM file or directory")
    if family is not None:
        spm.family = family
    return spm.eval().requires_grad_(False)


def check_family(spm: StepAwarePreferenceModel, model_family: str) -> None:
    """Refuse an SPM trained for another model family (e.g. an SDXL SPM on an SD-1.5 model).

    Unknown SPM family passes: own-trained SPMs without a record and renamed files are allowed.
    """
    if spm.family is not None and model_family is not None and spm.family != model_family:
        raise SPMError(
            f"this SPM was trained for {spm.family} but the model is {model_family}; use the {model_family} SPM"
        )
