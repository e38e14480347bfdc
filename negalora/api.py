"""The requests that cross the worker pipe, and their one wire format (as krita-ai-diffusion's
``backend/api.py``): every request is a frozen dataclass of plain values, ``to_wire`` and
``from_wire`` turn any of them into JSON-ready dicts and back, and a job message names its kind.

Torch-free by contract (tests/test_startup_imports.py): the window, the CLI's parser and the worker
protocol import this module; only the worker renders. The names of the samplers and of the LoRA
passes are here too, for the same reason.
"""

import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from negalora import checkpoint_kind as ck
from negalora.errors import NegaloraError
from negalora.prompt_syntax import check_prompt
from negalora.train.config import TrainConfig

_T = typing.TypeVar("_T")

__all__ = [
    "BOTH",
    "LORA_PASS_DESCRIPTIONS",
    "CHECKPOINT_SWEEP",
    "DEFAULT",
    "DEFAULT_SCALES",
    "DEFAULT_SCHEDULER",
    "FORMATS",
    "KINDS",
    "MAX_SEED",
    "MAX_SIDE",
    "NEGATIVE",
    "POSITIVE",
    "LORA_PASSES",
    "SCALE_SWEEP",
    "SCHEDULERS",
    "THREE_WAY",
    "CompareRequest",
    "ExportRequest",
    "GenerateJob",
    "GenerateRequest",
    "TrainRequest",
    "canonical_name",
    "check_lora_passes",
    "check_request",
    "check_size",
    "from_wire",
    "job_message",
    "request_of",
    "to_wire",
]

MAX_SEED = 2**32 - 1
MAX_SIDE = 4096
MAX_BATCH = 64  # the most images in one pipeline call: a request's and a recipe's bound
DEFAULT_STRENGTH = 0.5  # img2img: keeps a reject's composition and re-renders its detail

# -- names: the samplers and the LoRA passes ----------------------------------------------------

# A1111's sampler names -> (diffusers class name, config overrides); negalora.schedulers builds them
SCHEDULERS = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}
DEFAULT_SCHEDULER = "Euler"


def canonical_name(name: str) -> str:
    """Accept names case-insensitively and with '_' or '-' for spaces (``euler_a``, ``dpm++-2m-karras``)."""
    wanted = name.strip().lower().replace("_", " ").replace("-", " ")
    for known in SCHEDULERS:
        if known.lower() == wanted:
            return known
    raise NegaloraError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")


# The guidance passes a LoRA acts on (negalora.lora_passes applies them)
BOTH = "both"
NEGATIVE = "negative"
POSITIVE = "positive"  # the prompt's own pass: for a LoRA of what is liked (picks, KTO, DPO)
LORA_PASSES = (BOTH, NEGATIVE, POSITIVE)
# How the product applies a LoRA unless told otherwise (generation, comparisons, export notes): on
# the demo world the negative pass alone cut defects where both passes leaked them into the
# positive pass and lost prompt adherence (docs/efficacy.md).
DEFAULT = NEGATIVE
LORA_PASS_DESCRIPTIONS = {
    BOTH: "both guidance passes (as A1111, ComfyUI and diffusers apply a LoRA)",
    NEGATIVE: "the negative (unconditional) pass only",
    POSITIVE: "the positive (prompt's) pass only",
}


def check_lora_passes(value: str) -> str:
    if value not in LORA_PASSES:
        raise NegaloraError(f"LoRA passes {value!r}: must be one of {', '.join(LORA_PASSES)}")
    return value


# -- generation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateRequest:
    prompts: tuple[str, ...]
    negative: str = ""
    count: int = 1  # images per prompt
    seed: int | None = None  # first seed; None draws a random one (always recorded)
    steps: int = 25
    guidance: float = 7.0
    width: int | None = None  # None: the model's native size
    height: int | None = None
    scheduler: str = DEFAULT_SCHEDULER
    lora: str | None = None
    lora_scale: float = 1.0
    lora_passes: str = DEFAULT  # both | negative | positive: the guidance passes the LoRA acts on
    # A second LoRA, on the negative pass only, beside ``lora`` (e.g. `right` on the positive pass
    # and `wrong` on the negative one)
    negative_lora: str | None = None
    negative_lora_scale: float = 1.0
    use_refiner: bool = True  # when the model has one
    refiner_switch: float = 0.8
    batch_size: int | None = None  # images per pipeline call; None: auto (negalora.device.auto_batch_size)
    # img2img: a stored image's id ("12" or "#12") or an image file (imported into the store first);
    # "" renders from noise. ``strength`` is A1111's denoising strength: the share of the steps re-run.
    init_image: str = ""
    strength: float = DEFAULT_STRENGTH


@dataclass(frozen=True)
class GenerateJob:
    """Generation requests run as one job. ``reject`` (Make wrong images) rates each new image
    ``reject`` with ``reasons`` as it is stored."""

    requests: tuple[GenerateRequest, ...] = ()
    reject: bool = False
    reasons: tuple[str, ...] = ()


def check_size(width: int, height: int) -> None:
    for side in (width, height):
        if side % 8 or side < 8 or side > MAX_SIDE:
            raise NegaloraError(f"size {width}x{height}: each side must be a multiple of 8 between 8 and {MAX_SIDE}")


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and not (1 <= batch_size <= MAX_BATCH):
        raise NegaloraError(f"batch size {batch_size}: must be between 1 and {MAX_BATCH}, or auto")


def check_strength(strength: float, steps: int) -> None:
    if not (0 < strength <= 1):
        raise NegaloraError(f"strength {strength}: must be above 0 and at most 1")
    if int(steps * strength) < 1:  # diffusers re-runs int(steps x strength) of the steps
        raise NegaloraError(f"strength {strength} of {steps} steps re-runs no step; raise the strength or the steps")


def check_request(request: GenerateRequest) -> None:
    """Everything about a request that can be checked before a model is loaded."""
    if not any(p.strip() for p in request.prompts) and not request.init_image:  # an init image has its own
        raise NegaloraError("no prompt given")
    if request.count < 1:
        raise NegaloraError(f"count {request.count}: must be at least 1")
    if request.steps < 1 or request.steps > 1000:
        raise NegaloraError(f"steps {request.steps}: must be between 1 and 1000")
    if not (0 <= request.guidance <= 50):
        raise NegaloraError(f"guidance {request.guidance}: must be between 0 and 50")
    if request.width is not None or request.height is not None:
        side = request.width or request.height or 0
        check_size(request.width or side, request.height or side)
    if not (0 < request.refiner_switch < 1):
        raise NegaloraError(f"refiner switch {request.refiner_switch}: must be between 0 and 1")
    if request.init_image:
        check_strength(request.strength, request.steps)
    if request.seed is not None and not (0 <= request.seed <= MAX_SEED):
        raise NegaloraError(f"seed {request.seed}: must be between 0 and {MAX_SEED}")
    check_batch_size(request.batch_size)
    for p in (*request.prompts, request.negative):
        check_prompt(p)
    canonical_name(request.scheduler)
    check_lora_passes(request.lora_passes)
    if request.lora:
        check_lora_file(Path(request.lora).expanduser())
    if request.negative_lora:
        check_lora_file(Path(request.negative_lora).expanduser())


def check_lora_file(path: Path) -> None:
    if not path.is_file():
        raise NegaloraError(f"{path}: no such LoRA file")
    kind = ck.checkpoint_kind(path)
    if kind != ck.LORA:
        raise NegaloraError(f"{path}: {ck.DESCRIPTIONS.get(kind, kind).split(' (')[0]}, not a LoRA")


# -- comparisons ------------------------------------------------------------------------------

THREE_WAY, SCALE_SWEEP, CHECKPOINT_SWEEP = "three_way", "scale_sweep", "checkpoint_sweep"
KINDS = (THREE_WAY, SCALE_SWEEP, CHECKPOINT_SWEEP)
DEFAULT_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass(frozen=True)
class CompareRequest:
    prompts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (1, 2)
    kind: str = THREE_WAY
    lora: str = ""  # a LoRA file, or a training run's id
    step: int | None = None  # with a run: the checkpoint (default: the one marked best, else the last)
    checkpoint_steps: tuple[int, ...] = ()  # checkpoint sweep: the steps shown (empty: every kept one)
    scale: float = 1.0
    scales: tuple[float, ...] = DEFAULT_SCALES
    token: str = "wrong"
    base_negative: str = ""  # the artist's own negative prompt, kept in every column
    lora_passes: str = DEFAULT
    extra_column: bool = True  # three-way: a fourth column with the LoRA on the other passes
    # three-way: a column with a second LoRA (a file or a run id) on the negative pass beside the LoRA
    negative_lora: str = ""
    negative_lora_step: int | None = None
    negative_lora_scale: float = 1.0
    steps: int = 25
    guidance: float = 7.0
    width: int | None = None
    height: int | None = None
    scheduler: str = DEFAULT_SCHEDULER
    prompt_set: str | None = None  # a stored test-prompt set fills in prompts and seeds
    batch_size: int | None = None  # cells per pipeline call within a column; None: auto
    # Re-renders: rows are these images (stored ids or files) x seeds, each column an img2img of the
    # row's image at ``strength``; the prompt is the request's one prompt, else each image's own.
    init_images: tuple[str, ...] = ()
    strength: float = DEFAULT_STRENGTH

    def to_dict(self) -> dict:
        return to_wire(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CompareRequest":
        return from_wire(cls, data)


# -- training and export ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRequest:
    """A new run with ``config``, or ``resume`` of a run by its id."""

    config: TrainConfig = field(default_factory=TrainConfig)
    resume: str | None = None


FORMATS = ("kohya", "diffusers")


@dataclass(frozen=True)
class ExportRequest:
    run_id: str
    fmt: str = "kohya"
    step: int | None = None  # None: the run's best step, else its last checkpoint
    name: str | None = None  # None: the --out file's stem, else <token>-<run>-step<N>
    out: str | None = None  # a .safetensors path or a folder; None: <home>/exports/
    verify: bool = True

    def to_dict(self) -> dict:
        return to_wire(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExportRequest":
        return from_wire(cls, data)


# -- the wire format --------------------------------------------------------------------------

JOB_KINDS: dict[str, type] = {
    "generate": GenerateJob,
    "compare": CompareRequest,
    "train": TrainRequest,
    "export": ExportRequest,
}


def to_wire(request) -> dict:
    """A request as plain JSON values (tuples become lists, nested requests dicts)."""
    out = {}
    for f in fields(request):
        value = getattr(request, f.name)
        if is_dataclass(value):
            value = to_wire(value)
        elif isinstance(value, tuple):
            value = [to_wire(v) if is_dataclass(v) else v for v in value]
        out[f.name] = value
    return out


def from_wire(cls: type[_T], data: dict) -> _T:
    """The request of type ``cls`` that ``to_wire`` made ``data`` of; names an unknown or missing field."""
    if not isinstance(data, dict):
        raise NegaloraError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    if cls is TrainConfig:
        return typing.cast(_T, TrainConfig.from_dict(data))  # its own rules: a stored run's older config keeps working
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(typing.cast(typing.Any, cls))}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NegaloraError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    try:
        return cls(
            **{
                name: _value(hint=hints[name], value=value, where=f"{cls.__name__}.{name}")
                for name, value in data.items()
            }
        )
    except TypeError as exc:
        raise NegaloraError(f"{cls.__name__}: {exc}") from None


_KINDS = {str: "text", bool: "true or false", int: "a whole number", float: "a finite number"}


def json_value(kind: type, value, what: str, error: type[NegaloraError] = NegaloraError):
    """``value`` (from JSON) as ``kind``: bools are not numbers here, and a float must be finite.
    Anything else raises ``error`` naming ``what`` (a request's field, a recipe's)."""
    if kind is str and isinstance(value, str):
        return value
    if kind is bool and type(value) is bool:
        return value
    if kind is int and type(value) is int:
        return value
    if kind is float and type(value) in (int, float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        shown = repr(value[:40]) + ("..." if len(value) > 40 else "")
    elif isinstance(value, list | dict):
        shown = f"a JSON {'list' if isinstance(value, list) else 'object'}"
    else:
        shown = repr(value)[:40]
    raise error(f"{what} is {shown}, not {_KINDS.get(kind, kind.__name__)}")


def _value(hint, value, where: str):
    """``value`` as the field's type; a value of the wrong type is refused, naming the field."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and type(None) in typing.get_args(hint):
            return None
        if len(inner) == 1:
            return _value(inner[0], value, where)
        for option in inner:
            try:
                return _value(option, value, where)
            except NegaloraError:
                continue
        raise NegaloraError(f"{where}: {value!r} is none of {', '.join(getattr(a, '__name__', str(a)) for a in inner)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise NegaloraError(f"{where}: expected a list, got {type(value).__name__}")
        (item, *_rest) = typing.get_args(hint)
        return tuple(_value(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(hint, type) and is_dataclass(hint):
        return from_wire(hint, value)
    if hint in (str, bool, int, float):
        return json_value(hint, value, where)
    return value


def job_message(job_id: str, model: str, request) -> dict:
    """The message that asks the worker to run ``request`` on ``model``."""
    kind = next((k for k, cls in JOB_KINDS.items() if isinstance(request, cls)), None)
    if kind is None:
        raise TypeError(f"{type(request).__name__} is not a worker request")
    return {"type": "job", "job": job_id, "model": model, "kind": kind, "request": to_wire(request)}


Request = GenerateJob | CompareRequest | TrainRequest | ExportRequest


def request_of(message: dict) -> Request:
    """The request a job message carries."""
    kind = message.get("kind")
    if kind not in JOB_KINDS:
        raise NegaloraError(f"job kind {kind!r}: must be one of {', '.join(JOB_KINDS)}")
    return from_wire(JOB_KINDS[kind], message.get("request") or {})
