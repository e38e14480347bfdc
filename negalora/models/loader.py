"""One loader for every way a user names a model: ``demo``, a diffusers folder, a single SDXL
``.safetensors`` file (loaded offline with the configs in ``resources/``) or a hub id."""

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negalora.models.quiet import quiet_libraries

# Before diffusers' pipelines import transformers: its import-time notes (no torchvision) are noise here.
quiet_libraries()

from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

from negalora import checkpoint_kind as ck
from negalora.device import Placement
from negalora.errors import NegaloraError
from negalora.hashing import HashCache, sha256_bytes
from negalora.home import Home
from negalora.models.demo import DEMO_NAME, DEMO_SIZE, ensure_demo_folder
from negalora.models.tokenizer import PAD_CLIP_L, PAD_OPENCLIP, clip_tokenizer
from negalora.resources import SDXL_BASE_CONFIG, SDXL_REFINER_CONFIG
from negalora.safetensors_check import PICKLE_SUFFIXES, check_safetensors

SDXL_SIZE = 1024


@dataclass
class LoadedModel:
    pipe: StableDiffusionXLPipeline
    name: str
    source: str  # demo | folder | file | hub
    location: str
    sha256: str
    native_size: int
    placement: Placement
    scheduler_config: dict = field(default_factory=dict)  # the model's own, before any sampler swap
    refiner: StableDiffusionXLImg2ImgPipeline | None = None
    refiner_name: str = ""
    refiner_location: str = ""
    refiner_sha256: str = ""
    vae_name: str = ""  # a separate VAE given with --vae ("" when the model's own)
    vae_location: str = ""
    vae_sha256: str = ""

    @property
    def unet_channels(self) -> int:
        """The UNet's first block width (320 for SDXL): what a batch's activation memory scales with."""
        return int(self.pipe.unet.config.block_out_channels[0])


def _looks_like_path(spec: str) -> bool:
    """A hub id is exactly ``owner/name``; anything else the user typed is meant as a path."""
    return (
        spec.startswith((".", "/", "~"))
        or "\\" in spec
        or spec.count("/") != 1
        or Path(spec).suffix.lower() in PICKLE_SUFFIXES | {".safetensors"}
    )


def _folder_hash(folder: Path, hashes: HashCache) -> str:
    """A folder's identity: the sha256 of its UNet weight files' hashes."""
    files = sorted((folder / "unet").glob("*.safetensors"))
    if not files:
        raise NegaloraError(f"{folder}: no unet/*.safetensors weights (pickled .bin weights are not loaded)")
    return sha256_bytes("".join(hashes.get(f) for f in files).encode())


def _folder_weights_hash(folder: Path, hashes: HashCache) -> str:
    files = sorted(folder.glob("*.safetensors"))
    return sha256_bytes("".join(hashes.get(f) for f in files).encode())


def _check_weights(parts: list[Path]) -> None:
    """Check every safetensors header in a model's part folders before a library opens one (they raise errors
    of their own, or hang, on a hostile header), and refuse a part that holds only pickled weights."""
    for part in parts:
        files = sorted(f for f in part.iterdir() if f.is_file()) if part.is_dir() else []
        weights = [f for f in files if f.suffix.lower() == ".safetensors"]
        pickles = [f for f in files if f.suffix.lower() in PICKLE_SUFFIXES]
        if pickles and not weights:
            raise NegaloraError(
                f"{part}: only pickled weights ({pickles[0].name}), which can run code when loaded; "
                "negalora loads only .safetensors"
            )
        for f in weights:
            check_safetensors(f)


def _check_folder(folder: Path, want: str) -> list[Path]:
    """Check a pipeline folder's model_index.json; returns the folders of the parts it names."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise NegaloraError(f"{folder}: not a diffusers model folder (no model_index.json)")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        cls = data.get("_class_name", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise NegaloraError(f"{index}: unreadable ({exc})") from exc
    if cls != want:
        raise NegaloraError(f"{folder}: a {cls or 'unknown'} folder; negalora needs a {want}")
    return [folder / k for k, v in data.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]


def _place(pipe, placement: Placement):
    pipe.to(placement.device)  # the dtype was set at load time
    if pipe.vae is not None and pipe.vae.dtype != placement.vae_dtype:
        pipe.vae.to(dtype=placement.vae_dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_vae(spec: str, placement: Placement) -> AutoencoderKL:
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NegaloraError(f"{path}: not a diffusers VAE folder (no config.json)")
        _check_weights([path])
        with _loading(path):
            return AutoencoderKL.from_pretrained(str(path), use_safetensors=True, local_files_only=True)
    if path.is_file():
        check_safetensors(path)  # refuses pickles and damaged or hostile headers
        with _loading(path):
            return AutoencoderKL.from_single_file(
                str(path), config=str(SDXL_BASE_CONFIG), subfolder="vae", local_files_only=True
            )
    raise NegaloraError(f"{spec}: no such VAE file or folder")


@contextmanager
def _loading(path):
    """Turn the libraries' errors about a bad model folder or file into a one-line NegaloraError."""
    try:
        yield
    except NegaloraError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NegaloraError(f"{path}: cannot be loaded ({reason[:200]})") from exc


def load_model(
    spec: str,
    home: Home,
    placement: Placement,
    *,
    vae: str | None = None,
    refiner: str | None = None,
) -> LoadedModel:
    """Load an SDXL pipeline from ``spec`` and place it on the chosen device."""
    hashes = HashCache(home.cache / "hashes.json")
    dtype = placement.dtype
    common: dict[str, Any] = {"dtype": dtype}
    if vae:
        common["vae"] = _load_vae(vae, placement)
    if spec == DEMO_NAME:
        folder = ensure_demo_folder(home.models / DEMO_NAME)
        _check_weights(_check_folder(folder, StableDiffusionXLPipeline.__name__))
        with _loading(folder):
            pipe = StableDiffusionXLPipeline.from_pretrained(
                str(folder), use_safetensors=True, local_files_only=True, **common
            )
        loaded = LoadedModel(pipe, DEMO_NAME, "demo", DEMO_NAME, _folder_hash(folder, hashes), DEMO_SIZE, placement)
    else:
        path = Path(spec).expanduser()
        if path.is_dir() or path.is_file():
            pipe, sha = _load_local(StableDiffusionXLPipeline, path, ck.SDXL_BASE, SDXL_BASE_CONFIG, hashes, common)
            native = _native_size(pipe) if path.is_dir() else SDXL_SIZE
            source = "folder" if path.is_dir() else "file"
            name = path.name if path.is_dir() else path.stem
            loaded = LoadedModel(pipe, name, source, str(path.resolve()), sha, native, placement)
        elif _looks_like_path(spec):
            raise NegaloraError(f"{spec}: no such model file or folder")
        else:
            loaded = _load_hub(spec, common, placement)
    if vae:
        vae_path = Path(vae).expanduser().resolve()
        loaded.vae_name = vae_path.stem if vae_path.is_file() else vae_path.name
        loaded.vae_location = str(vae_path)
        loaded.vae_sha256 = hashes.get(vae_path) if vae_path.is_file() else _folder_weights_hash(vae_path, hashes)
    if vae and not common["vae"].config.get("force_upcast", True):
        # An fp16-fix VAE (force_upcast false) is safe to run in fp16.
        placement = Placement(placement.device, placement.dtype, placement.dtype)
        loaded.placement = placement
    loaded.scheduler_config = dict(loaded.pipe.scheduler.config)
    _place(loaded.pipe, loaded.placement)
    if refiner:
        _attach_refiner(loaded, refiner, hashes)
    return loaded


def _load_local(cls, path: Path, kind: str, config_dir: Path, hashes: HashCache, kwargs: dict):
    """A pipeline from a diffusers folder, or from a single file with the shipped configs, offline;
    returns it with the model's identity hash."""
    if path.is_dir():
        _check_weights(_check_folder(path, cls.__name__))
        sha = _folder_hash(path, hashes)
        with _loading(path):
            return cls.from_pretrained(str(path), use_safetensors=True, local_files_only=True, **kwargs), sha
    ck.require_kind(path, kind)
    sha = hashes.get(path)
    tokenizers = {"tokenizer_2": clip_tokenizer(PAD_OPENCLIP)}
    if kind == ck.SDXL_BASE:
        tokenizers["tokenizer"] = clip_tokenizer(PAD_CLIP_L)
    with _loading(path):
        pipe = cls.from_single_file(str(path), config=str(config_dir), local_files_only=True, **tokenizers, **kwargs)
    return pipe, sha


def _native_size(pipe) -> int:
    return int(pipe.unet.config.sample_size) * pipe.vae_scale_factor


def _load_hub(spec: str, common: dict, placement: Placement) -> LoadedModel:
    try:
        pipe = StableDiffusionXLPipeline.from_pretrained(spec, use_safetensors=True, **common)
    except Exception as exc:  # the hub client raises many kinds of network errors
        raise NegaloraError(
            f"{spec}: not a local path, and the model hub cannot provide it ({type(exc).__name__})"
        ) from exc
    sha = sha256_bytes(f"hub:{spec}:{pipe.config.get('_name_or_path', spec)}".encode())
    return LoadedModel(pipe, spec.split("/")[-1], "hub", spec, sha, _native_size(pipe), placement)


def _attach_refiner(loaded: LoadedModel, spec: str, hashes: HashCache) -> None:
    """Load an SDXL refiner that shares the base's VAE (already placed in its safe dtype)."""
    shared = {"vae": loaded.pipe.vae, "dtype": loaded.placement.dtype}
    path = Path(spec).expanduser()
    if not (path.is_dir() or path.is_file()):
        raise NegaloraError(f"{spec}: no such refiner file or folder")
    ref, sha = _load_local(StableDiffusionXLImg2ImgPipeline, path, ck.SDXL_REFINER, SDXL_REFINER_CONFIG, hashes, shared)
    ref.to(loaded.placement.device)
    ref.vae = loaded.pipe.vae  # keep the VAE's safe dtype
    ref.set_progress_bar_config(disable=True)
    loaded.refiner = ref
    loaded.refiner_name = path.stem if path.is_file() else path.name
    loaded.refiner_location = str(path.resolve())
    loaded.refiner_sha256 = sha
