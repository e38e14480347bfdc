"""The efficacy experiment: does the "wrong" LoRA make the demo model's defects rarer, and which
way of applying it works best?

It does what an artist does, through the product's own code paths: generate a session, reject
the images the detectors flag (standing in for the artist's eye), train the LoRA with the normal
trainer, then render held-out prompts and seeds in every way the product can use the LoRA and
count the defects in each. Renders go in batches (``Generator.render_batch``), many times faster
on the CPU. The test suite runs a small version; ``benchmarks/bench_efficacy.py`` the full one.
"""

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from negalora.compare.votes import wilson_interval
from negalora.demo_world.classify import agrees, classify
from negalora.demo_world.detect import detect_defects
from negalora.demo_world.world import all_captions
from negalora.errors import NegaloraError
from negalora.generate import GenerateRequest, Generator
from negalora.lora_passes import BOTH, NEGATIVE
from negalora.pngmeta import png_bytes
from negalora.store import Store
from negalora.train.config import PRESETS, preset

GRID_ROWS = 8  # images kept per column for the report's grid
# The demo model's preset is the recipe measured here (the preset holds it, so the two cannot drift).
DEMO_RECIPE = {k: getattr(PRESETS["cpu-demo"], k) for k in ("rank", "lr", "steps", "batch", "feed_forward")}


@dataclass(frozen=True)
class EfficacyConfig:
    session_images: int = 2000  # the artist's session, rated by the detectors (about 9 % rejected)
    session_seed: int = 1000
    held_out_prompts: int = 200  # x held_out_seeds rows, on seeds the session never used
    held_out_seeds: int = 5
    held_out_seed: int = 500_000
    sampling_steps: int = 20
    # At CFG 3 the demo model makes about 10 % defects; at CFG 7 about 5 % (docs/efficacy_probes.md).
    guidance: float = 3.0
    scale: float = 1.0
    # The best recipe of the probes (docs/efficacy_probes.md): Woolf's rank-4 attention LoRA traded
    # duplicates for cropped shapes; rank 16 with the feed-forward layers at LR 3e-4 did not.
    train: dict = field(default_factory=lambda: dict(DEMO_RECIPE))
    prior_preservation: tuple[bool, ...] = (False, True)  # one LoRA per value
    negative_token: str = "wrong"
    batch: int = 25  # images per pipeline call


@dataclass
class Column:
    key: str
    label: str
    defects: list[set[str]] = field(default_factory=list)  # per row
    prompts: list[str] = field(default_factory=list)
    agreement: list[tuple[bool, bool]] = field(default_factory=list)  # (colour, shape) as prompted
    images: list = field(default_factory=list)  # the first rows' images, for the report's grid

    @property
    def n(self) -> int:
        return len(self.defects)

    @property
    def defective(self) -> int:
        return sum(1 for d in self.defects if d)

    @property
    def rate(self) -> float:
        return self.defective / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.defective, self.n)

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.defects:
            for kind in d:
                out[kind] = out.get(kind, 0) + 1
        return out

    def against(self, base: "Column") -> dict:
        """Row by row against base (the same prompt, seed and noise): rows whose defect this way
        removed, and clean rows where it drew one. Paired counts see an effect that two rates of
        the same size blur."""
        pairs = list(zip(base.defects, self.defects, strict=True))  # the same rows, or a ValueError
        return {
            "base_defective": sum(1 for b, _ in pairs if b),
            "fixed": sum(1 for b, o in pairs if b and not o),
            "broken": sum(1 for b, o in pairs if not b and o),
        }

    def summary(self) -> dict:
        lo, hi = self.interval
        return {
            "key": self.key,
            "label": self.label,
            "n": self.n,
            "defective": self.defective,
            "rate": self.rate,
            "low": lo,
            "high": hi,
            "by_kind": self.by_kind(),
            "adherence": adherence(self),
        }


@dataclass
class EfficacyResult:
    config: EfficacyConfig
    session: dict  # images, rejected, rejected by kind
    runs: dict[str, str]  # "plain" / "prior" -> run id
    columns: list[Column]

    def column(self, key: str) -> Column:
        return next(c for c in self.columns if c.key == key)

    @property
    def adherence(self) -> dict:
        return adherence(self.column("base"))

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "session": self.session,
            "runs": self.runs,
            "columns": [{**c.summary(), "against_base": c.against(self.column("base"))} for c in self.columns],
            "adherence": self.adherence,
        }


def held_out_prompts(n: int, seed: int) -> tuple[str, ...]:
    """n captions of the world, each once where possible, in a seeded order."""
    captions = all_captions()
    random.Random(seed).shuffle(captions)
    return tuple((captions * (n // len(captions) + 1))[:n])


def adherence(column: Column) -> dict:
    """How often the classifier agrees with the prompt's colour and shape."""
    n = len(column.agreement)
    colour = sum(c for c, _ in column.agreement)
    shape = sum(s for _, s in column.agreement)
    return {"n": n, "colour": colour / n if n else 0.0, "shape": shape / n if n else 0.0}


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def rated_session(generator: Generator, store: Store, cfg: EfficacyConfig):
    """Generate the artist's session into the store and reject what the detectors flag, with the
    kinds as reasons; yields each (image id, recipe, image, kinds) as it is stored."""
    prompts = held_out_prompts(cfg.session_images, cfg.session_seed)
    request = GenerateRequest(
        prompts=prompts, seed=cfg.session_seed, steps=cfg.sampling_steps, guidance=cfg.guidance, negative=""
    )
    recipes = generator.plan(request)
    model = generator.model
    model_id = store.ensure_model(model.name, model.source, model.location, model.sha256)
    for batch in batches(recipes, cfg.batch):
        for recipe, image in zip(batch, generator.render_batch(batch), strict=True):
            stored = store.add_generated(recipe, model_id, png_bytes(image, recipe))
            kinds = frozenset(detect_defects(image))
            if kinds:
                store.rate([stored.id], "reject", sorted(kinds))
            yield stored.id, recipe, image, kinds


def run_session(generator: Generator, store: Store, cfg: EfficacyConfig) -> dict:
    """Generate the artist's session and reject what the detectors flag, with the kinds as reasons."""
    rejected: dict[str, int] = {}
    made = rejects = 0
    for _, _, _, kinds in rated_session(generator, store, cfg):
        made += 1
        if kinds:
            rejects += 1
            for k in kinds:
                rejected[k] = rejected.get(k, 0) + 1
    return {"images": made, "rejected": rejects, "by_kind": rejected}


def score_column(
    generator: Generator,
    key: str,
    label: str,
    rows: list[tuple[str, int]],
    cfg: EfficacyConfig,
    negative: str = "",
    lora: str | None = None,
    passes: str = BOTH,
    keep: int = GRID_ROWS,
) -> Column:
    """Render every (prompt, seed) row one way and count the defects. The same rows and noise in
    every column: only the negative prompt and the LoRA differ."""
    request = GenerateRequest(
        prompts=("x",),
        steps=cfg.sampling_steps,
        guidance=cfg.guidance,
        negative=negative,
        lora=lora,
        lora_scale=cfg.scale,
        lora_passes=passes,
    )
    template = generator.plan(request)[0]
    recipes = [replace(template, prompt=p, seed=s) for p, s in rows]
    column = Column(key, label)
    for batch in batches(recipes, cfg.batch):
        for recipe, image in zip(batch, generator.render_batch(batch), strict=True):
            if len(column.images) < keep:
                column.images.append(image)
            column.prompts.append(recipe.prompt)
            column.defects.append(detect_defects(image))
            column.agreement.append(agrees(classify(image), recipe.prompt))
    return column


def train_lora(generator: Generator, store: Store, cfg: EfficacyConfig, prior: bool) -> tuple[str, str]:
    """Train the "wrong" LoRA on the session's rejects with negalora's trainer: (run id, LoRA file)."""
    from negalora.train.trainer import Trainer

    train = preset("cpu-demo", **cfg.train)
    train = replace(train, token=cfg.negative_token, prior_preservation=prior, validation_steps=0)
    train.check()
    generator.release_lora()
    result = Trainer(store.home, store, generator.model).start(train)
    if result.status != "done":
        raise NegaloraError(f"training run {result.run_id} ended {result.status}")
    return result.run_id, store.checkpoints(result.run_id)[-1]["path"]


def held_out_rows(cfg: EfficacyConfig) -> list[tuple[str, int]]:
    """(prompt, seed) rows, every seed its own: the world has only 90 captions, so prompts repeat,
    but no row is ever rendered twice. Seeds are held out (the session never used them); the
    captions are the world's own."""
    prompts = held_out_prompts(cfg.held_out_prompts, cfg.held_out_seed)
    n = cfg.held_out_seeds
    return [(p, cfg.held_out_seed + i * n + k) for i, p in enumerate(prompts) for k in range(n)]


def run_efficacy(
    generator: Generator,
    store: Store,
    cfg: EfficacyConfig,
    on_stage: Callable[[str], None] | None = None,
) -> EfficacyResult:
    stage = on_stage or (lambda s: None)
    generator.release_lora()  # base and session without any LoRA a caller left on the pipeline
    stage("session")
    session = run_session(generator, store, cfg)
    rows = held_out_rows(cfg)
    token = cfg.negative_token
    stage("rendering held-out rows: base, negative only")
    columns = [
        score_column(generator, "base", "base", rows, cfg),
        score_column(generator, "negative", f"negative `{token}` only", rows, cfg, negative=token),
    ]
    runs = {}
    for prior in cfg.prior_preservation:
        name = "prior" if prior else "plain"
        note = " (prior preservation)" if prior else ""
        stage(f"training{note}")
        run_id, lora = train_lora(generator, store, cfg, prior)
        runs[name] = run_id
        for passes, label in ((BOTH, "LoRA both passes + negative"), (NEGATIVE, "LoRA negative pass only + negative")):
            stage(f"rendering held-out rows: {label}{note}")
            key = f"lora_{passes}_{name}"
            columns.append(score_column(generator, key, label + note, rows, cfg, token, lora, passes))
    generator.release_lora()
    return EfficacyResult(cfg, session, runs, columns)
