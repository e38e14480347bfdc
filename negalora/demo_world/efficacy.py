"""The efficacy experiment: does the "wrong" LoRA make the demo model's defects rarer, and which
way of applying it works best?

It does what an artist does, through the product's own code paths: generate a session, reject
the images the detectors flag (standing in for the artist's eye), train the LoRA with the normal
trainer, then render held-out prompts and seeds in every column the product offers and count the
defects in each. Nothing here is specific to the benchmark: the test suite runs a small version.
"""

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from PIL import Image

from negalora.compare.runner import SCALE_SWEEP, THREE_WAY, CompareRequest, run_comparison
from negalora.compare.votes import wilson_interval
from negalora.demo_world.classify import agrees, classify
from negalora.demo_world.detect import detect_defects
from negalora.demo_world.world import all_captions
from negalora.generate import GenerateRequest, Generator, generate_to_store
from negalora.lora_passes import BOTH, NEGATIVE
from negalora.store import Store
from negalora.train.config import TrainConfig, preset


@dataclass(frozen=True)
class EfficacyConfig:
    session_images: int = 320  # the artist's session, rated by the detectors
    session_seed: int = 1000
    held_out_prompts: int = 80  # x held_out_seeds rows, on seeds the session never used
    held_out_seeds: int = 5
    held_out_seed: int = 500_000
    sampling_steps: int = 20
    guidance: float = 7.0
    scale: float = 1.0
    train: dict = field(default_factory=lambda: {"rank": 4, "lr": 1e-4, "steps": 400, "batch": 4})
    prior_preservation: tuple[bool, ...] = (False, True)  # one LoRA per value
    negative_token: str = "wrong"


@dataclass
class Column:
    key: str
    label: str
    image_paths: list[str] = field(default_factory=list)
    defects: list[set[str]] = field(default_factory=list)

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
        }


@dataclass
class EfficacyResult:
    config: EfficacyConfig
    session: dict  # images, rejected, rejected by kind
    runs: dict[str, str]  # "plain" / "prior" -> run id
    columns: list[Column]
    adherence: dict  # colour / shape agreement of the base column
    comparisons: list[int]

    def column(self, key: str) -> Column:
        return next(c for c in self.columns if c.key == key)

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "session": self.session,
            "runs": self.runs,
            "columns": [c.summary() for c in self.columns],
            "adherence": self.adherence,
            "comparisons": self.comparisons,
        }


def held_out_prompts(n: int, seed: int) -> tuple[str, ...]:
    """n captions of the world, each once where possible, in a seeded order."""
    captions = all_captions()
    random.Random(seed).shuffle(captions)
    return tuple((captions * (n // len(captions) + 1))[:n])


def run_session(generator: Generator, store: Store, cfg: EfficacyConfig) -> dict:
    """Generate the artist's session and reject what the detectors flag, with the kinds as reasons."""
    prompts = held_out_prompts(cfg.session_images, cfg.session_seed)
    request = GenerateRequest(prompts=prompts, seed=cfg.session_seed, steps=cfg.sampling_steps, guidance=cfg.guidance)
    made = generate_to_store(generator, store, request)
    rejected: dict[str, int] = {}
    reject_ids = []
    for stored, _recipe in made:
        kinds = detect_defects(Image.open(stored.path))
        if kinds:
            reject_ids.append(stored.id)
            store.rate([stored.id], "reject", sorted(kinds))
            for k in kinds:
                rejected[k] = rejected.get(k, 0) + 1
    return {"images": len(made), "rejected": len(reject_ids), "by_kind": rejected}


def _score(store: Store, comparison_id: int, columns: list[tuple[int, str, str]]) -> list[Column]:
    data = store.comparison(comparison_id)
    out = []
    for col, key, label in columns:
        column = Column(key, label)
        for cell in data["cells"]:
            if cell["col"] == col:
                column.image_paths.append(cell["path"])
                column.defects.append(detect_defects(Image.open(cell["path"])))
        out.append(column)
    return out


def adherence(column: Column, prompts: list[str], limit: int = 100) -> dict:
    """How often the classifier agrees with the prompt's colour and shape (the base column)."""
    colour = shape = 0
    n = min(limit, len(column.image_paths))
    for path, prompt in zip(column.image_paths[:n], prompts[:n], strict=True):
        c_ok, s_ok = agrees(classify(Image.open(path)), prompt)
        colour += c_ok
        shape += s_ok
    return {"n": n, "colour": colour / n if n else 0.0, "shape": shape / n if n else 0.0}


def run_efficacy(
    generator: Generator,
    store: Store,
    cfg: EfficacyConfig,
    on_stage: Callable[[str], None] | None = None,
) -> EfficacyResult:
    from negalora.train.trainer import Trainer

    stage = on_stage or (lambda s: None)
    stage("session")
    session = run_session(generator, store, cfg)
    runs = {}
    for prior in cfg.prior_preservation:
        stage(f"training ({'with' if prior else 'without'} prior preservation)")
        train = preset("cpu-demo", **cfg.train)
        train = replace(train, token=cfg.negative_token, prior_preservation=prior, validation_steps=0)
        generator.release_lora()
        result = Trainer(store.home, store, generator.model).start(_checked(train))
        runs["prior" if prior else "plain"] = result.run_id
    prompts = held_out_prompts(cfg.held_out_prompts, cfg.held_out_seed)
    seeds = tuple(cfg.held_out_seed + k for k in range(cfg.held_out_seeds))
    rows_prompts = [p for p in prompts for _ in seeds]
    common = dict(
        prompts=prompts,
        seeds=seeds,
        steps=cfg.sampling_steps,
        guidance=cfg.guidance,
        token=cfg.negative_token,
        scale=cfg.scale,
    )
    columns: list[Column] = []
    comparisons = []
    first = True
    for name, run_id in runs.items():
        note = " + prior preservation" if name == "prior" else ""
        if first:  # base, negative only and both LoRA ways in one grid
            stage(f"rendering held-out rows: base, negative, LoRA{note}")
            comp = run_comparison(
                generator, store, CompareRequest(kind=THREE_WAY, lora=run_id, lora_passes=BOTH, **common)
            )
            comparisons.append(comp.id)
            columns += _score(
                store,
                comp.id,
                [
                    (0, "base", "base"),
                    (1, "negative", f"negative `{cfg.negative_token}` only"),
                    (2, f"lora_both_{name}", f"LoRA both passes + negative{note}"),
                    (3, f"lora_negative_{name}", f"LoRA negative pass only + negative{note}"),
                ],
            )
            first = False
            continue
        for passes, label in ((BOTH, "LoRA both passes + negative"), (NEGATIVE, "LoRA negative pass only + negative")):
            stage(f"rendering held-out rows: {label}{note}")
            comp = run_comparison(
                generator,
                store,
                CompareRequest(kind=SCALE_SWEEP, scales=(cfg.scale,), lora=run_id, lora_passes=passes, **common),
            )
            comparisons.append(comp.id)
            columns += _score(store, comp.id, [(0, f"lora_{passes}_{name}", label + note)])
    base = next(c for c in columns if c.key == "base")
    return EfficacyResult(cfg, session, runs, columns, adherence(base, rows_prompts), comparisons)


def _checked(config: TrainConfig) -> TrainConfig:
    config.check()
    return config
