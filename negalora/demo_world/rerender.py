"""Re-render through the LoRA: do a session's rejects lose their defect when re-rendered (img2img)?

The efficacy experiment (``negalora.demo_world.efficacy``) asks whether the ``wrong`` LoRA makes
fresh images less defective; this one asks what an artist does with the images already rejected.
It generates the same kind of session, rejects what the detectors flag, trains the LoRA on the
rejects with the product's trainer (all three: efficacy's own functions), then re-renders every
reject from its own pixels at a few denoising strengths, each way:

- ``none``: no LoRA, no negative prompt (as efficacy's base column);
- ``lora_negative``: the LoRA on the negative pass only, with the negative ``wrong`` token (as
  efficacy's best column, the product's default);
- ``lora_both``: the LoRA on both passes with the token (the way A1111 and ComfyUI load a LoRA).

Every way and strength re-renders the same rejects with the same prompt and the same re-render
seed per reject, so rows can be compared one by one. Per column it counts the share repaired (the
detectors find nothing), the share where the reject's own defect is gone, the share with a new
defect of another kind, colour and shape as prompted (the classifier), and how much the picture
changed (mean absolute pixel difference from the reject, and whether the classifier still reads
the reject's colour, shape and background). ``benchmarks/bench_rerender.py`` runs the full
measurement and writes ``docs/efficacy_rerender.md``; the suite runs a small one.
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from negalora.compare.grid import render_grid
from negalora.compare.votes import wilson_interval
from negalora.demo_world.classify import Classification, agrees, classify
from negalora.demo_world.detect import detect_defects
from negalora.demo_world.efficacy import DEMO_RECIPE, EfficacyConfig, batches, run_session, train_lora
from negalora.generate import GenerateRequest, Generator
from negalora.lora_passes import BOTH, NEGATIVE
from negalora.recipe import Recipe
from negalora.store import Store

STRENGTHS = (0.3, 0.5, 0.7)
NONE, LORA_NEGATIVE, LORA_BOTH = "none", "lora_negative", "lora_both"
GRID_ROWS = 6  # rejects kept per column for the report's grid
Z95 = 1.959963984540054


@dataclass(frozen=True)
class RerenderConfig:
    # The session, its sampling and the LoRA's recipe: efficacy's defaults (docs/efficacy.md).
    session_images: int = EfficacyConfig.session_images
    session_seed: int = EfficacyConfig.session_seed
    sampling_steps: int = EfficacyConfig.sampling_steps  # img2img runs int(steps x strength) of them
    guidance: float = EfficacyConfig.guidance
    scale: float = EfficacyConfig.scale
    train: dict = field(default_factory=lambda: dict(DEMO_RECIPE))
    negative_token: str = EfficacyConfig.negative_token
    batch: int = EfficacyConfig.batch
    strengths: tuple[float, ...] = STRENGTHS
    # Reject i is re-rendered with seed rerender_seed + i in every column: seeds neither the session
    # (session_seed + k) nor efficacy's held-out rows (500,000 on) use.
    rerender_seed: int = 800_000
    both_passes: bool = True  # the lora_both column (the way that lost in efficacy)

    def session_config(self) -> EfficacyConfig:
        """The efficacy config that efficacy's session and trainer read (one LoRA, no prior)."""
        return EfficacyConfig(
            session_images=self.session_images,
            session_seed=self.session_seed,
            sampling_steps=self.sampling_steps,
            guidance=self.guidance,
            scale=self.scale,
            train=dict(self.train),
            prior_preservation=(False,),
            negative_token=self.negative_token,
            batch=self.batch,
        )


@dataclass(frozen=True)
class Reject:
    """One rejected image of the session, as the store holds it."""

    image_id: int
    path: str
    prompt: str
    seed: int  # the session's seed it was made with
    kinds: frozenset[str]  # the reasons it was rejected with (the detectors' verdict)
    rerender_seed: int
    reading: Classification  # what the classifier reads in the reject itself


@dataclass(frozen=True)
class Row:
    """One reject re-rendered one way at one strength."""

    image_id: int
    defects: frozenset[str]
    agreement: tuple[bool, bool]  # (colour, shape) as prompted
    diff: float  # mean absolute pixel difference from the reject, 0-255
    kept: bool  # the classifier reads the reject's colour, shape and background in it
    source_kinds: frozenset[str]

    @property
    def repaired(self) -> bool:
        return not self.defects

    @property
    def own_gone(self) -> bool:
        return not (self.defects & self.source_kinds)

    @property
    def new_kind(self) -> bool:
        return bool(self.defects - self.source_kinds)


def _share(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else 0.0, "low": lo, "high": hi}


def _mean_interval(values: list[float]) -> dict:
    n = len(values)
    if not n:
        return {"mean": 0.0, "low": 0.0, "high": 0.0}
    mean = float(np.mean(values))
    half = Z95 * float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "low": mean - half, "high": mean + half}


@dataclass
class RerenderColumn:
    way: str  # NONE, LORA_NEGATIVE or LORA_BOTH
    label: str
    strength: float
    rows: list[Row] = field(default_factory=list)  # one per reject, in the rejects' order
    images: list = field(default_factory=list)  # the first rejects' re-renders, for the grid

    @property
    def key(self) -> str:
        return f"{self.way}@{self.strength:g}"

    @property
    def n(self) -> int:
        return len(self.rows)

    def count(self, test: Callable[[Row], bool]) -> int:
        return sum(1 for r in self.rows if test(r))

    @property
    def repaired(self) -> int:
        return self.count(lambda r: r.repaired)

    def share(self, name: str) -> dict:
        """A share with its Wilson 95% interval: repaired, own_gone, new_kind, colour, shape, kept."""
        tests: dict[str, Callable[[Row], bool]] = {
            "repaired": lambda r: r.repaired,
            "own_gone": lambda r: r.own_gone,
            "new_kind": lambda r: r.new_kind,
            "colour": lambda r: r.agreement[0],
            "shape": lambda r: r.agreement[1],
            "kept": lambda r: r.kept,
        }
        return _share(self.count(tests[name]), self.n)

    def diff(self) -> dict:
        return _mean_interval([r.diff for r in self.rows])

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            for kind in r.defects:
                out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items()))

    def against(self, other: "RerenderColumn") -> dict:
        """Row by row (the same reject, seed and strength): rejects this way repaired and the other
        did not, and the other way round."""
        pairs = list(zip(other.rows, self.rows, strict=True))
        if any(a.image_id != b.image_id for a, b in pairs):
            raise ValueError("the columns re-render different rejects")
        return {
            "only_this": sum(1 for a, b in pairs if b.repaired and not a.repaired),
            "only_other": sum(1 for a, b in pairs if a.repaired and not b.repaired),
            "both": sum(1 for a, b in pairs if a.repaired and b.repaired),
        }

    def summary(self) -> dict:
        return {
            "key": self.key,
            "way": self.way,
            "label": self.label,
            "strength": self.strength,
            "n": self.n,
            **{name: self.share(name) for name in ("repaired", "own_gone", "new_kind", "colour", "shape", "kept")},
            "diff": self.diff(),
            "by_kind": self.by_kind(),
        }


@dataclass
class RerenderResult:
    config: RerenderConfig
    session: dict  # images, rejected, by_kind (efficacy's run_session)
    run_id: str  # the training run ("" when a LoRA was given)
    lora: str
    rejects: list[Reject]
    columns: list[RerenderColumn]
    sources: list = field(default_factory=list)  # the first rejects' own images, for the grid

    def column(self, way: str, strength: float) -> RerenderColumn:
        return next(c for c in self.columns if c.way == way and c.strength == strength)

    def ways(self) -> list[str]:
        return list(dict.fromkeys(c.way for c in self.columns))

    def source_adherence(self) -> dict:
        """Colour and shape as prompted in the rejects themselves, before any re-render."""
        n = len(self.rejects)
        agree = [agrees(r.reading, r.prompt) for r in self.rejects]
        return {
            "colour": _share(sum(c for c, _ in agree), n),
            "shape": _share(sum(s for _, s in agree), n),
        }

    def to_dict(self) -> dict:
        none = {c.strength: c for c in self.columns if c.way == NONE}
        return {
            "config": asdict(self.config),
            "session": self.session,
            "run_id": self.run_id,
            "rejects": len(self.rejects),
            "rejects_by_kind": rejects_by_kind(self.rejects),
            "source_adherence": self.source_adherence(),
            "columns": [
                {**c.summary(), **({"against_none": c.against(none[c.strength])} if c.strength in none else {})}
                for c in self.columns
            ],
        }


def rejects_by_kind(rejects: list[Reject]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rejects:
        for kind in r.kinds:
            out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def session_rejects(store: Store, cfg: RerenderConfig) -> list[Reject]:
    """The store's rejected generated images, oldest first, each with its prompt, seed and reasons
    and the seed it is re-rendered with."""
    rows = sorted((r for r in store.images(verdict="reject") if r["source"] == "generated"), key=lambda r: r["id"])
    return [
        Reject(
            image_id=r["id"],
            path=r["path"],
            prompt=r["prompt"],
            seed=r["seed"],
            kinds=frozenset(r["reasons"]),
            rerender_seed=cfg.rerender_seed + i,
            reading=classify(_open_rgb(r["path"])),
        )
        for i, r in enumerate(rows)
    ]


def way_settings(cfg: RerenderConfig, way: str, lora: str) -> dict:
    """The request fields of a way: efficacy's base, and its LoRA columns with the negative token."""
    if way == NONE:
        return {"negative": ""}
    passes = {LORA_NEGATIVE: NEGATIVE, LORA_BOTH: BOTH}[way]
    return {"negative": cfg.negative_token, "lora": lora, "lora_scale": cfg.scale, "lora_passes": passes}


def way_label(cfg: RerenderConfig, way: str) -> str:
    token = cfg.negative_token
    return {
        NONE: "no LoRA",
        LORA_NEGATIVE: f"LoRA negative pass + negative `{token}`",
        LORA_BOTH: f"LoRA both passes + negative `{token}`",
    }[way]


def rerender_column(
    generator: Generator,
    rejects: list[Reject],
    cfg: RerenderConfig,
    way: str,
    strength: float,
    lora: str = "",
    keep: int = GRID_ROWS,
) -> RerenderColumn:
    """Re-render every reject one way at one strength and read the results."""
    column = RerenderColumn(way, way_label(cfg, way), strength)
    if not rejects:
        return column
    request = GenerateRequest(
        prompts=(rejects[0].prompt,),
        init_image=rejects[0].path,
        strength=strength,
        steps=cfg.sampling_steps,
        guidance=cfg.guidance,
        **way_settings(cfg, way, lora),
    )
    template = generator.plan(request)[0]
    for batch in batches(rejects, cfg.batch):
        # Held just before the call: the generator keeps only its most recent init images.
        recipes: list[Recipe] = [
            replace(
                template,
                prompt=r.prompt,
                seed=r.rerender_seed,
                init_image=generator.add_init_image(Path(r.path)),
            )
            for r in batch
        ]
        for reject, image in zip(batch, generator.render_batch(recipes), strict=True):
            source = np.asarray(_open_rgb(reject.path), dtype=np.int16)
            pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
            reading = classify(image)
            column.rows.append(
                Row(
                    image_id=reject.image_id,
                    defects=frozenset(detect_defects(image)),
                    agreement=agrees(reading, reject.prompt),
                    diff=float(np.abs(pixels - source).mean()),
                    kept=reading == reject.reading,
                    source_kinds=reject.kinds,
                )
            )
            if len(column.images) < keep:
                column.images.append(image)
    return column


def rerender_columns(
    generator: Generator,
    rejects: list[Reject],
    cfg: RerenderConfig,
    lora: str,
    on_stage: Callable[[str], None] | None = None,
    keep: int = GRID_ROWS,
) -> list[RerenderColumn]:
    """Every way at every strength, way by way (the LoRA is loaded once per way)."""
    stage = on_stage or (lambda s: None)
    ways = [NONE, LORA_NEGATIVE] + ([LORA_BOTH] if cfg.both_passes else [])
    columns = []
    for way in ways:
        for strength in cfg.strengths:
            stage(f"re-rendering {len(rejects)} rejects: {way_label(cfg, way)}, strength {strength:g}")
            columns.append(rerender_column(generator, rejects, cfg, way, strength, lora, keep))
    generator.release_lora()
    return columns


def run_rerender(
    generator: Generator,
    store: Store,
    cfg: RerenderConfig,
    on_stage: Callable[[str], None] | None = None,
    lora: str | None = None,
) -> RerenderResult:
    """The session, its rejects, the LoRA trained on them (or ``lora``, a LoRA file to use instead),
    and every reject re-rendered every way at every strength."""
    stage = on_stage or (lambda s: None)
    generator.release_lora()  # the session without any LoRA a caller left on the pipeline
    session_cfg = cfg.session_config()
    stage("session")
    session = run_session(generator, store, session_cfg)
    rejects = session_rejects(store, cfg)
    run_id = ""
    if lora is None:
        stage(f"training on {len(rejects)} rejects")
        run_id, lora = train_lora(generator, store, session_cfg, prior=False)
    columns = rerender_columns(generator, rejects, cfg, lora, on_stage)
    sources = [_open_rgb(r.path) for r in rejects[:GRID_ROWS]]
    return RerenderResult(cfg, session, run_id, lora, rejects, columns, sources)


# -- the report ------------------------------------------------------------------------------


def sample_grid(result: RerenderResult) -> Image.Image | None:
    """The first rejects: the reject, then every way at every strength."""
    n = min([len(result.sources)] + [len(c.images) for c in result.columns])
    if n == 0:
        return None
    labels = ["reject"] + [f"{c.label}, strength {c.strength:g}" for c in result.columns]
    cells = [[result.sources[i]] + [c.images[i] for c in result.columns] for i in range(n)]
    rows = [(f"{r.prompt} ({', '.join(sorted(r.kinds))})", r.rerender_seed) for r in result.rejects[:n]]
    grid, _ = render_grid(cells, labels, rows)
    return grid


def same_session(cfg: RerenderConfig, efficacy: EfficacyConfig) -> bool:
    """Whether the session is the efficacy experiment's own: the same images, seeds and settings."""
    ours = cfg.session_config()
    keys = ("session_images", "session_seed", "sampling_steps", "guidance", "batch")
    return all(getattr(ours, k) == getattr(efficacy, k) for k in keys)


def _pct(share: dict) -> str:
    return f"{share['rate']:.0%} ({share['low']:.0%} – {share['high']:.0%})"


def _apart(a: dict, b: dict) -> bool:
    return a["low"] > b["high"] or b["low"] > a["high"]


def report_markdown(result: RerenderResult, seconds: float, command: str, grid_name: str | None = None) -> str:
    cfg = result.config
    n = len(result.rejects)
    src = result.source_adherence()
    kinds = rejects_by_kind(result.rejects)
    lines = [
        "# Re-render the rejects through the LoRA (demo model)",
        "",
        f"Measured with `{command}` in {seconds / 60:.1f} minutes on the CPU.",
        "",
        "What does an artist get by re-rendering a rejected image (img2img) instead of throwing it",
        "away? As in [efficacy.md](efficacy.md), the detectors reject the defective images of a",
        "demo-model session and the `wrong` LoRA is trained on those rejects with negalora's trainer.",
        "Then every reject is re-rendered from its own pixels, with its own prompt, at each denoising",
        f"strength (the share of the steps re-run), {'three' if cfg.both_passes else 'two'} ways. Every way "
        "and strength re-renders the",
        "same rejects with the same re-render seed per reject; only the LoRA, its pass and the negative",
        "token differ.",
        "",
        f"- Session: {result.session['images']} images, {result.session['rejected']} rejected "
        f"({', '.join(f'{k} {v}' for k, v in sorted(result.session['by_kind'].items()))}); "
        f"{n} rejects re-rendered ({', '.join(f'{k} {v}' for k, v in kinds.items())}; one image can "
        "carry two kinds)"
        + (
            "; efficacy.md's own session (the same prompts, seeds and settings)."
            if same_session(cfg, EfficacyConfig())
            else "."
        ),
        f"- LoRA: {', '.join(f'{k}={v}' for k, v in cfg.train.items())}, no prior preservation"
        + (" (efficacy's recipe, the cpu-demo preset)" if cfg.train == DEMO_RECIPE else "")
        + (f"; run {result.run_id}." if result.run_id else "; a given LoRA file (no training)."),
        f"- Re-render: strengths {', '.join(f'{s:g}' for s in cfg.strengths)} of {cfg.sampling_steps} steps "
        f"({', '.join(str(int(cfg.sampling_steps * s)) for s in cfg.strengths)} steps run), CFG {cfg.guidance:g}, "
        f"LoRA strength {cfg.scale:g}, reject i on seed {cfg.rerender_seed:,} + i (none used by the session), "
        f"{cfg.batch} images per pipeline call.",
        f"- The rejects themselves: colour as prompted {_pct(src['colour'])}, shape {_pct(src['shape'])}.",
        "- Ways: **no LoRA** (no negative prompt, as efficacy's base); **LoRA negative pass** (the "
        f"LoRA on the negative pass only, negative prompt `{cfg.negative_token}`: efficacy's best way and "
        "the product's default); "
        + (
            f"**LoRA both passes** (on the positive pass too, negative `{cfg.negative_token}`: how A1111 "
            "and ComfyUI load a LoRA, worse than base in efficacy)."
            if cfg.both_passes
            else "the both-passes way was not run."
        ),
        "",
        "Repaired: the detectors find no defect in the re-render. Own defect gone: none of the kinds the",
        "reject was rejected for is found (another may have appeared). New kind: a defect the reject did",
        "not have. Kept: the classifier reads the reject's own colour, shape and background in the",
        "re-render (coarse: the classifier's reading of a defective image is itself unsure, so a re-render",
        "that barely changed can read differently). Pixel change: mean absolute difference from the",
        "reject, 0–255. Shares are with their Wilson 95% intervals; pixel change with a normal 95%",
        "interval of the mean.",
        "",
        "| way | strength | repaired | own defect gone | new kind | colour as asked | shape as asked "
        "| kept | pixel change | defects left (by kind) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result.columns:
        s = c.summary()
        d = s["diff"]
        left = ", ".join(f"{k} {v}" for k, v in s["by_kind"].items()) or "none"
        lines.append(
            f"| {c.label} | {c.strength:g} | {s['repaired']['k']} / {c.n} = {_pct(s['repaired'])} | "
            f"{_pct(s['own_gone'])} | {_pct(s['new_kind'])} | {_pct(s['colour'])} | {_pct(s['shape'])} | "
            f"{_pct(s['kept'])} | {d['mean']:.1f} ({d['low']:.1f} – {d['high']:.1f}) | {left} |"
        )
    lines += ["", "## Reading", "", *reading(result)]
    if grid_name:
        lines += [
            "",
            f"![The first rejects: the reject, then every way at every strength]({grid_name})",
        ]
    lines.append("")
    return "\n".join(lines)


def reading(result: RerenderResult) -> list[str]:
    """What the table says, computed from it, for an artist; never more than the intervals show."""
    cfg = result.config
    if not result.rejects:
        return ["- The session had no rejects: nothing to re-render."]
    out = []
    ways = result.ways()
    for way in ways:
        cols = [result.column(way, s) for s in cfg.strengths]
        parts = [
            f"{c.strength:g}: {c.share('repaired')['rate']:.0%} repaired, pixel change {c.diff()['mean']:.1f}, "
            f"kept {c.share('kept')['rate']:.0%}"
            for c in cols
        ]
        out.append(f"- {way_label(cfg, way)}: " + "; ".join(parts) + ".")
    diffs = [[result.column(w, s).diff()["mean"] for s in cfg.strengths] for w in ways]
    grows = all(all(a < b for a, b in zip(d, d[1:], strict=False)) for d in diffs)
    out.append(
        "- Strength's trade-off: "
        + (
            "in every way a higher strength changes the picture more (pixel change grows with strength)."
            if grows
            else "the pixel change does not grow with strength in every way (see the table)."
        )
    )
    best = max(result.columns, key=lambda c: (c.share("repaired")["rate"], -c.diff()["mean"]))
    best_r = best.share("repaired")
    ties = [
        c
        for c in result.columns
        if c is not best and not _apart(c.share("repaired"), best_r) and c.diff()["mean"] < best.diff()["mean"]
    ]
    line = (
        f"- Most repaired: **{best.label} at strength {best.strength:g}** ({_pct(best_r)}, "
        f"pixel change {best.diff()['mean']:.1f}, kept {best.share('kept')['rate']:.0%})."
    )
    if ties:
        gentlest = min(ties, key=lambda c: c.diff()["mean"])
        line += (
            f" Within its interval, and changing the picture less: {gentlest.label} at strength "
            f"{gentlest.strength:g} ({_pct(gentlest.share('repaired'))}, pixel change "
            f"{gentlest.diff()['mean']:.1f})."
        )
    out.append(line)
    if LORA_NEGATIVE in ways and NONE in ways:
        for s in cfg.strengths:
            lora, none = result.column(LORA_NEGATIVE, s), result.column(NONE, s)
            a, b = lora.share("repaired"), none.share("repaired")
            paired = lora.against(none)
            if _apart(a, b):
                verdict = "better" if a["rate"] > b["rate"] else "worse"
                said = f"**{verdict} than no LoRA beyond the 95% intervals**"
            else:
                said = "**not yet distinguishable** from no LoRA (the 95% intervals overlap)"
            out.append(
                f"- Strength {s:g}: the LoRA on the negative pass repairs {a['rate']:.0%} against {b['rate']:.0%} "
                f"without it: {said}. Row by row (the same reject, seed and strength): repaired by the LoRA "
                f"only {paired['only_this']}, without it only {paired['only_other']}, by both {paired['both']}."
            )
    src = result.source_adherence()
    for way in ways:
        lost = [
            s
            for s in cfg.strengths
            if result.column(way, s).share("colour")["high"] < src["colour"]["low"]
            or result.column(way, s).share("shape")["high"] < src["shape"]["low"]
        ]
        if lost:
            out.append(
                f"- {way_label(cfg, way)} draws the prompted colour or shape less often than the rejects "
                f"themselves, beyond the intervals, at strength {', '.join(f'{s:g}' for s in lost)}."
            )
    if LORA_BOTH in ways:
        worse = [
            s
            for s in cfg.strengths
            if result.column(LORA_BOTH, s).share("shape")["high"]
            < result.column(LORA_NEGATIVE, s).share("shape")["low"]
        ]
        if worse:
            out.append(
                "- The LoRA on both passes draws the prompted shape less often than on the negative pass, "
                f"beyond the intervals, at strength {', '.join(f'{s:g}' for s in worse)}."
            )
    return out
