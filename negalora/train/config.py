"""Training settings, their presets, and the checks made before a run starts."""

import json
from dataclasses import asdict, dataclass, field, fields, replace

from negalora.errors import NegaloraError
from negalora.resources import DEMO_NAME

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP's attention, as kohya and diffusers adapt it
LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit")
MIXED = ("no", "bf16", "fp16")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # torch.compile's; inductor makes the fast kernels
# dreambooth: the rejects as the `wrong` token (Woolf). kto: every pick (desirable) and reject
# (undesirable) with its own prompt (Diffusion-KTO). dpo: pairs of one prompt, preferred and not
# (Diffusion-DPO): blind votes first, then a pick and a reject of one prompt and size.
OBJECTIVES = ("dreambooth", "kto", "dpo")
SOURCES = ("rejects", "picks")
VALIDATION_PASSES = ("negative", "both", "positive")
PICKS_TOKEN = "right"  # the token of a picks LoRA unless another is given
DEFAULT_BETA = {"kto": 1000.0, "dpo": 5000.0}  # the papers' (diffusers' DPO-SDXL script uses 5000)


@dataclass(frozen=True)
class TrainConfig:
    token: str = "wrong"
    captions_with_reasons: bool = False  # "wrong, bad hands" instead of "wrong"
    reasons: tuple[str, ...] = ()  # only rejects with one of these reason tags (empty: all)
    rank: int = 4
    alpha: float | None = None  # None: alpha = rank (scale 1), as Woolf's LoRA
    feed_forward: bool = False  # also adapt the transformer blocks' feed-forward layers
    train_text_encoder: bool = False  # a LoRA on both text encoders too (their outputs are then not cached)
    steps: int = 500
    lr: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    batch: int = 1
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    resolution: int | None = None  # None: the model's native size (1024 on SDXL)
    flip: bool = False
    min_snr_gamma: float | None = None  # 5.0 is the usual value
    noise_offset: float = 0.0
    optimizer: str = "adamw"
    weight_decay: float = 1e-2
    mixed_precision: str = "auto"  # auto: bf16 / fp16 on a GPU, no on the CPU
    gradient_checkpointing: bool = False
    # torch.compile the UNet's training step (kohya's --torch_compile): faster steps after a one-time
    # compile (minutes), so it pays on long runs. "" is off; else the backend.
    compile: str = ""
    seed: int = 0
    checkpoint_every: int = 100
    keep_last: int = 5  # checkpoints kept on disk (0: all)
    validation_prompts: tuple[str, ...] = ()
    validation_seed: int = 1234
    validation_steps: int = 20
    # Validation images show the LoRA the way the product applies it (negative pass) at the CFG of the
    # model's default test set, so what the artist watches is what comparisons and export will use.
    # or "both" (as A1111, ComfyUI and diffusers apply a LoRA), or "positive" (a LoRA of what is liked)
    validation_passes: str = "negative"
    validation_guidance: float | None = None  # None: the model's default test set's CFG (demo 3, SDXL 7)
    max_nan_steps: int = 5  # stop after this many non-finite losses in a row
    # Prior preservation (DreamBooth): class images made by the base model before training, trained
    # on beside the rejects, so the LoRA learns "wrong" without drifting away from the model's prior.
    prior_preservation: bool = False
    class_prompt: str = ""  # caption of the class images ("" is the unconditional prior)
    class_images: int = 0  # how many (0: as many as the training images)
    prior_weight: float = 1.0
    class_steps: int = 25  # sampling steps used to make the class images
    extra: tuple[str, ...] = field(default_factory=tuple)  # files or folders trained on besides the rejects
    objective: str = "dreambooth"  # one of OBJECTIVES
    # dreambooth: what the token learns: the rejects (`wrong`, for the negative pass) or the picks
    # (`right`, for the positive pass)
    source: str = "rejects"
    beta: float | None = None  # kto/dpo: the strength of the preference (None: DEFAULT_BETA)
    desirable_weight: float = 1.0  # kto: the weight of the picks' loss (lambda_D)
    undesirable_weight: float = 1.0  # kto: the weight of the rejects' loss (lambda_U)

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def preference(self) -> bool:
        return self.objective in DEFAULT_BETA

    @property
    def liked(self) -> bool:
        """A LoRA of what is liked (KTO, DPO, a picks LoRA), for the positive pass; else a `wrong` LoRA."""
        return self.preference or self.source == "picks"

    @property
    def preference_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.objective, 0.0)

    @property
    def target_modules(self) -> tuple[str, ...]:
        return ATTENTION + (FEED_FORWARD if self.feed_forward else ())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        clean: dict = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**clean)

    def check(self) -> None:
        if self.rank < 1 or self.rank > 1024:
            raise NegaloraError(f"rank {self.rank}: must be between 1 and 1024")
        if self.steps < 1:
            raise NegaloraError(f"steps {self.steps}: must be at least 1")
        if not (0 < self.lr < 1):
            raise NegaloraError(f"learning rate {self.lr}: must be between 0 and 1")
        if self.batch < 1 or self.grad_accum < 1:
            raise NegaloraError("batch and gradient accumulation must be at least 1")
        if self.lr_schedule not in LR_SCHEDULES:
            raise NegaloraError(f"lr schedule {self.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise NegaloraError(f"optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.mixed_precision not in (*MIXED, "auto"):
            raise NegaloraError(f"mixed precision {self.mixed_precision!r}: choose auto, no, bf16 or fp16")
        if self.compile and self.compile not in COMPILE_BACKENDS:
            raise NegaloraError(f"compile {self.compile!r}: choose one of {', '.join(COMPILE_BACKENDS)}")
        if self.resolution is not None and (self.resolution % 8 or self.resolution < 8):
            raise NegaloraError(f"resolution {self.resolution}: must be a multiple of 8")
        if self.checkpoint_every < 1:
            raise NegaloraError(f"checkpoint every {self.checkpoint_every}: must be at least 1")
        if not self.token.strip():
            raise NegaloraError("the instance token must not be empty")
        if self.validation_passes not in VALIDATION_PASSES:
            raise NegaloraError(
                f"validation passes {self.validation_passes!r}: choose one of {', '.join(VALIDATION_PASSES)}"
            )
        if self.validation_guidance is not None and not (0 <= self.validation_guidance <= 50):
            raise NegaloraError(f"validation CFG {self.validation_guidance}: must be between 0 and 50")
        if self.prior_weight < 0 or self.class_images < 0 or self.class_steps < 1:
            raise NegaloraError("prior weight and class images must not be negative; class steps at least 1")
        if self.source not in SOURCES:
            raise NegaloraError(f"source {self.source!r}: choose one of {', '.join(SOURCES)}")
        if self.source == "picks" and self.objective != "dreambooth":
            raise NegaloraError(f"{self.objective} learns from picks and rejects together: no --source")
        if self.objective not in OBJECTIVES:
            raise NegaloraError(f"objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.preference:
            if self.beta is not None and self.beta <= 0:
                raise NegaloraError(f"beta {self.beta}: must be above 0")
            if self.desirable_weight < 0 or self.undesirable_weight < 0:
                raise NegaloraError("KTO's desirable and undesirable weights must not be negative")
            if self.train_text_encoder or self.prior_preservation:
                raise NegaloraError(
                    f"{self.objective}: the base model is the reference, so the text encoders stay frozen and "
                    "there is no prior preservation (drop --train-text-encoder / --prior-preservation)"
                )


PRESETS = {
    # Woolf's published LoRA: rank 4 on the UNet attention, LR 1e-4.
    "woolf": TrainConfig(rank=4, lr=1e-4, steps=500, batch=1, checkpoint_every=100),
    # A 12 GB card: gradient checkpointing, 8-bit AdamW, bf16/fp16, accumulation instead of a big batch.
    "12gb": TrainConfig(
        rank=8,
        lr=1e-4,
        steps=800,
        batch=1,
        grad_accum=4,
        gradient_checkpointing=True,
        optimizer="adamw8bit",
        min_snr_gamma=5.0,
        checkpoint_every=200,
    ),
    # The demo model on a CPU: the recipe that cut the demo world's defects most (rank 16 with the
    # feed-forward layers, LR 3e-4; docs/efficacy.md). Under 2 minutes on two CPU cores.
    "cpu-demo": TrainConfig(
        rank=16, feed_forward=True, lr=3e-4, steps=800, batch=4, checkpoint_every=200, validation_steps=12
    ),
}


def default_preset(model_spec: str) -> str:
    """The preset a run starts from unless one is chosen: the measured demo recipe for the demo
    model, Woolf's published recipe for a real SDXL."""
    return "cpu-demo" if model_spec == DEMO_NAME else "woolf"


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise NegaloraError(f"preset {name!r}: choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
