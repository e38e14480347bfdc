"""Running a comparison: plan every cell's recipe, render them on one loaded pipeline, store each
cell as a normal image, then write the labelled grid and record it all in the store."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from negalora.api import (
    CHECKPOINT_SWEEP,
    DEFAULT_SCALES,
    KINDS,
    SCALE_SWEEP,
    THREE_WAY,
    CompareRequest,
    check_strength,
)
from negalora.atomic import atomic_write_bytes
from negalora.cancel import CancelToken
from negalora.compare import columns as cols
from negalora.compare.grid import grid_png_bytes, render_grid
from negalora.compare.prompt_sets import after_training_request, liked_lora
from negalora.errors import Cancelled, NegaloraError
from negalora.generate import GenerateRequest, Generator, with_init_image
from negalora.lora_passes import NEGATIVE, check_lora_passes
from negalora.pngmeta import png_bytes
from negalora.recipe import Recipe
from negalora.store import Store, StoredImage

MAX_CELLS = 2000
# the request and its kinds live in negalora.api (torch-free); importable from here as before
__all__ = [
    "CHECKPOINT_SWEEP",
    "DEFAULT_SCALES",
    "KINDS",
    "MAX_CELLS",
    "SCALE_SWEEP",
    "THREE_WAY",
    "CompareRequest",
    "after_training_request",
    "fill_from_prompt_set",
    "make_columns",
    "resolve_lora",
    "run_comparison",
]


@dataclass(frozen=True)
class LoraSource:
    path: str
    run_id: str | None = None
    step: int | None = None
    checkpoints: tuple[tuple[int, str], ...] = ()  # (step, path) of the run's kept checkpoints


def resolve_lora(store: Store, lora: str, step: int | None = None) -> LoraSource:
    """A LoRA named by a file path or by a run id (then a checkpoint of it)."""
    if not lora:
        raise NegaloraError("a comparison needs a LoRA: a .safetensors file or a training run id")
    path = Path(lora).expanduser()
    if path.suffix or path.exists():
        if not path.is_file():
            raise NegaloraError(f"{path}: no such LoRA file")
        return LoraSource(str(path.resolve()))
    run = store.run(lora)
    checkpoints = tuple((c["step"], c["path"]) for c in store.checkpoints(lora))
    if not checkpoints:
        raise NegaloraError(f"run {lora}: has no checkpoints yet")
    wanted = step if step is not None else run.get("best_step")
    chosen = dict(checkpoints).get(wanted) if wanted is not None else None
    if wanted is not None and chosen is None:
        if step is not None:
            kept = ", ".join(str(s) for s, _ in checkpoints)
            raise NegaloraError(f"run {lora}: no kept checkpoint at step {step} (kept: {kept})")
        wanted = None  # the best one was pruned: fall back to the last
    if wanted is None or chosen is None:
        wanted, chosen = checkpoints[-1]
    return LoraSource(chosen, run_id=lora, step=wanted, checkpoints=checkpoints)


def fill_from_prompt_set(store: Store, request: CompareRequest) -> CompareRequest:
    if not request.prompt_set:
        return request
    from dataclasses import replace

    from negalora.compare.prompt_sets import DEFAULT_SET, DEMO_SET, ensure_default_set

    if request.prompt_set in (DEFAULT_SET, DEMO_SET):  # the built-in sets exist from their first use
        ensure_default_set(store, "demo" if request.prompt_set == DEMO_SET else "")
    ps = store.prompt_set(request.prompt_set)
    settings = {k: v for k, v in ps["settings"].items() if k in ("steps", "guidance", "token", "base_negative")}
    return replace(request, prompts=tuple(ps["prompts"]), seeds=tuple(ps["seeds"]), **settings)


def _check_base_model(store: Store, source: LoraSource, generator: Generator) -> None:
    """A run's LoRA is compared on the model it was trained on, or not at all."""
    if not source.run_id:
        return
    row = store.run_model(source.run_id)
    if row and row["hash"] != generator.model.sha256:
        raise NegaloraError(
            f"run {source.run_id} was trained on model {row['name']} ({row['hash'][:10]}); "
            f"the loaded model is {generator.model.name} ({generator.model.sha256[:10]})"
        )


def _second_name(request: CompareRequest, second: LoraSource) -> str:
    """The grid header's name for the second LoRA: its run (and step), else its file's name."""
    if second.run_id:
        return f"{second.run_id} @{second.step}"
    return Path(second.path).stem


def resolve_second(store: Store, request: CompareRequest, source: LoraSource) -> LoraSource | None:
    """The second LoRA of a three-way comparison (on the negative pass beside the first), checked."""
    if not request.negative_lora:
        return None
    if request.kind != THREE_WAY:
        raise NegaloraError("a second LoRA on the negative pass is a three-way comparison's column, not a sweep's")
    if request.lora_passes == NEGATIVE:
        raise NegaloraError(
            "the LoRA is already on the negative pass: put it on the positive pass (or both) to compare it "
            "beside a second LoRA on the negative pass"
        )
    second = resolve_lora(store, request.negative_lora, request.negative_lora_step)
    if Path(second.path).resolve() == Path(source.path).resolve():
        raise NegaloraError(f"{second.path}: the second LoRA is the compared LoRA itself")
    return second


def make_columns(
    request: CompareRequest, source: LoraSource, second: LoraSource | None = None, liked: bool = False
) -> list[cols.Column]:
    """``liked``: the LoRA is one of what is liked (KTO, DPO, picks), drawn with the prompt unchanged."""
    if request.kind == THREE_WAY:
        beside = None
        if second is not None:
            name = _second_name(request, second)
            beside = cols.SecondLora(second.path, request.negative_lora_scale, second.step, name)
        return cols.three_way(
            source.path,
            request.scale,
            request.token,
            request.lora_passes,
            request.extra_column,
            source.step,
            beside,
            liked,
        )
    if request.kind == SCALE_SWEEP:
        return cols.scale_sweep(source.path, request.scales, request.token, request.lora_passes, source.step, liked)
    if not source.run_id:
        raise NegaloraError("a checkpoint sweep needs a training run, not a LoRA file")
    kept = dict(source.checkpoints)
    steps = request.checkpoint_steps or tuple(kept)
    missing = [s for s in steps if s not in kept]
    if missing:
        raise NegaloraError(f"run {source.run_id}: no kept checkpoint at step {missing[0]}")
    return cols.checkpoint_sweep(
        [(s, kept[s]) for s in steps], request.scale, request.token, request.lora_passes, liked
    )


def check_compare_request(request: CompareRequest) -> None:
    if request.kind not in KINDS:
        raise NegaloraError(f"comparison kind {request.kind!r}: must be one of {', '.join(KINDS)}")
    if request.init_images:
        if len([p for p in request.prompts if p.strip()]) > 1:
            raise NegaloraError("a comparison of re-renders takes one prompt for every image, or none (their own)")
        check_strength(request.strength, request.steps)
    elif not request.prompts or not any(p.strip() for p in request.prompts):
        raise NegaloraError("a comparison needs at least one prompt")
    if not request.seeds:
        raise NegaloraError("a comparison needs at least one seed")
    if request.kind == SCALE_SWEEP and not request.scales:
        raise NegaloraError("a scale sweep needs at least one scale")
    if not request.token.strip():
        raise NegaloraError("the negative token is empty")
    check_lora_passes(request.lora_passes)


@dataclass(frozen=True)
class CompareProgress:
    cell_index: int  # the (first) cell being rendered
    cell_total: int
    step: int
    steps: int
    batch: int = 1  # cells rendered together, from cell_index on (down the column)


@dataclass
class ComparisonResult:
    id: int
    status: str  # done | cancelled
    columns: list[cols.Column]
    rows: list[tuple[str, int]]
    recipes: list[list[Recipe]]
    cells: list[list[StoredImage | None]] = field(default_factory=list)
    grid_path: Path | None = None


def plan_cells(
    generator: Generator, request: CompareRequest, columns: list[cols.Column], inits: Sequence[GenerateRequest] = ()
) -> list[list[Recipe]]:
    """recipes[row][col]; rows are prompt × seed, prompt-major (or init image × seed, with ``inits``:
    each a request whose init image and prompt are resolved). Only the column's stated differences vary."""
    negative_with_token = ", ".join(p for p in (request.base_negative, request.token) if p)
    sources = [(init.prompts[0], init.init_image) for init in inits] or [(p, "") for p in request.prompts]
    recipes = []
    for prompt, init_image in sources:
        for seed in request.seeds:
            row = []
            for column in columns:
                (recipe,) = generator.plan(
                    GenerateRequest(
                        prompts=(prompt,),
                        init_image=init_image,
                        strength=request.strength,
                        negative=negative_with_token if column.with_token else request.base_negative,
                        count=1,
                        seed=seed,
                        steps=request.steps,
                        guidance=request.guidance,
                        width=request.width,
                        height=request.height,
                        scheduler=request.scheduler,
                        lora=column.lora_path or None,
                        lora_scale=column.lora_scale,
                        lora_passes=column.lora_passes,
                        negative_lora=column.negative_lora_path or None,
                        negative_lora_scale=column.negative_lora_scale,
                    )
                )
                row.append(recipe)
            recipes.append(row)
    return recipes


def run_comparison(
    generator: Generator,
    store: Store,
    request: CompareRequest,
    on_progress: Callable[[CompareProgress], None] | None = None,
    cancel: CancelToken | None = None,
    on_cell: Callable[[int, int, StoredImage], None] | None = None,
    on_planned: Callable[["ComparisonResult"], None] | None = None,
) -> ComparisonResult:
    """Render and store every cell, then the grid. Cells are rendered column by column, in batches
    down each column (``request.batch_size``, default auto), so that a LoRA is loaded once per column,
    never once per cell. A cancel keeps the cells already made."""
    request = fill_from_prompt_set(store, request)
    check_compare_request(request)
    source = resolve_lora(store, request.lora, request.step)
    _check_base_model(store, source, generator)
    second = resolve_second(store, request, source)
    if second is not None:
        _check_base_model(store, second, generator)
    columns = make_columns(request, source, second, liked_lora(store, request.lora))
    one_prompt = tuple(p for p in request.prompts if p.strip())[:1]
    inits = [
        with_init_image(store, GenerateRequest(prompts=one_prompt, init_image=spec, strength=request.strength))
        for spec in request.init_images
    ]
    rows = [(p, s) for p in ([i.prompts[0] for i in inits] or request.prompts) for s in request.seeds]
    if len(rows) * len(columns) > MAX_CELLS:
        raise NegaloraError(f"{len(rows) * len(columns)} cells: more than {MAX_CELLS} in one comparison")
    recipes = plan_cells(generator, request, columns, inits)  # every check before the first cell
    model = generator.model
    model_id = store.ensure_model(model.name, model.source, model.location, model.sha256)
    prompt_set_id = store.prompt_set(request.prompt_set)["id"] if request.prompt_set else None
    comparison_id = store.create_comparison(
        request.kind,
        [c.to_dict() for c in columns],
        request.to_dict(),
        run_id=source.run_id,
        step=source.step,
        lora_path=source.path,
        lora_hash=next((r.lora_hash for r in recipes[0] if r.lora_hash), ""),
        prompt_set_id=prompt_set_id,
    )
    result = ComparisonResult(comparison_id, "running", columns, rows, recipes, [[None] * len(columns) for _ in rows])
    if on_planned is not None:
        on_planned(result)
    images: list[list[Image.Image]] = [[] for _ in rows]  # filled column by column: images[r][c]
    total = len(rows) * len(columns)
    index = 0
    try:
        for c in range(len(columns)):
            base = index

            def progress(p, base=base):
                if on_progress is not None:
                    on_progress(CompareProgress(base + p.image_index, total, p.step, p.steps, p.batch))

            column = [recipes[r][c] for r in range(len(rows))]
            made = generator.render_many(column, request.batch_size, progress if on_progress else None, cancel)
            for r, (recipe, image) in enumerate(made):
                recipes[r][c] = recipe  # as rendered: with the batch it was made in
                stored = store.add_generated(recipe, model_id, png_bytes(image, recipe))
                store.add_comparison_cell(comparison_id, r, c, stored.id)
                images[r].append(image)
                result.cells[r][c] = stored
                index += 1
                if on_cell is not None:
                    on_cell(r, c, stored)
    except Cancelled:
        result.status = "cancelled"
        store.finish_comparison(comparison_id, "cancelled")
        return result
    except BaseException:
        store.finish_comparison(comparison_id, "failed")  # never left "running"
        raise
    grid, factor = render_grid(images, [c.label for c in columns], rows)
    description = {
        "comparison": comparison_id,
        "kind": request.kind,
        "run": source.run_id,
        "step": source.step,
        "columns": [c.to_dict() for c in columns],
        "rows": [
            {"prompt": p, "seed": s, **({"init_image": recipes[r][0].init_image} if inits else {})}
            for r, (p, s) in enumerate(rows)
        ],
        "cell_upscale": factor,
        "cells": [[cell.id if cell else None for cell in row] for row in result.cells],
        "recipes": [[recipes[r][c].to_json() for c in range(len(columns))] for r in range(len(rows))],
    }
    grid_path = store.home.comparisons / f"{comparison_id:06d}" / "grid.png"
    atomic_write_bytes(grid_path, grid_png_bytes(grid, recipes[0][0], description))
    store.finish_comparison(comparison_id, "done", grid_path)
    result.status, result.grid_path = "done", grid_path
    return result
