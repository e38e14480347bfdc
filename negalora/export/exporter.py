"""One export, in order: read the checkpoint, convert the keys, build the metadata, write a temp file
beside the destination, read it back, reload it with diffusers and compare (``verify``), put it in
place, write the model card and grid beside it, record it in the store. Anything that fails before
the replace leaves the destination as it was.

``plan_export`` does everything up to writing, so the app can show the metadata that will be written.
"""

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from negalora.api import FORMATS, ExportRequest
from negalora.cancel import CancelToken
from negalora.errors import NegaloraError
from negalora.export import comfyui, kohya_keys, writer
from negalora.export import evidence as ev
from negalora.export.metadata import build_metadata, resolution, thumbnail_data_url
from negalora.export.model_card import Usage, liked_model_card, model_card
from negalora.export.source import ExportSource, find_source, read_checkpoint

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers looks for in a folder
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+ -]{0,99}")

HASH_NOTES = {
    "sha256": "sha256 of the whole exported file (not in its own header)",
    "sshs_model_hash": "sha256 of the tensor data after the header (A1111's LoRA hash; kohya's)",
    "modelspec.hash_sha256": "the same tensor-data sha256, with ModelSpec's 0x prefix",
    "sshs_legacy_hash": "kohya's legacy short hash, of bytes 0x100000-0x10FFFF of a copy with only ss_* keys",
    "checkpoint_sha256": "sha256 of the whole training checkpoint the export was made from",
}


@dataclass
class ExportPlan:
    request: ExportRequest
    source: ExportSource
    name: str
    dest: Path
    card: Path
    grid_source: Path | None
    grid_dest: Path
    alpha: float
    modules: int  # LoRA modules in the file
    tensors: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str] = field(repr=False)
    evidence: ev.Evidence = field(repr=False)
    usage: Usage = field(repr=False)
    workflow: Path = field(repr=False)  # ComfyUI, UI format
    api_workflow: Path = field(repr=False)  # ComfyUI, API format

    def workflows(self) -> tuple[dict, dict]:
        """The ComfyUI workflows (UI format, API format) that use the LoRA the way that measured best."""
        u = self.usage
        strength = 1.0
        if u.workflow_form == comfyui.BOTH_PASSES:  # a LoraLoader graph: the best measured strength above 0
            measured = self.evidence.strength
            strength = measured.scale or measured.nonzero or 1.0
        spec = comfyui.WorkflowSpec(
            ckpt_name=u.ckpt_name,
            lora_name=u.comfy_lora_name,
            form=u.workflow_form,
            prompt=u.prompt,
            negative="" if self.source.liked else self.source.config.token,
            seed=u.seed,
            steps=u.steps,
            cfg=u.guidance,
            sampler=u.scheduler,
            width=u.width,
            height=u.height,
            strength=strength,
            filename_prefix=f"negalora/{self.name}",
            extra={
                "run": self.source.run_id,
                "step": self.source.step,
                "lora": u.comfy_lora_name,
                "best_way": self.evidence.best,
                "measured_on": self.evidence.source,
            },
        )
        return comfyui.ui_workflow(spec), comfyui.api_workflow(spec)


@dataclass(frozen=True)
class ExportResult:
    export_id: int
    run_id: str
    step: int
    fmt: str
    path: str
    sha256: str
    bytes: int
    model_card: str
    grid: str
    metadata: dict
    verification: dict
    hashes: dict
    seconds: float
    comfyui_workflow: str = ""
    comfyui_api_workflow: str = ""
    files: tuple[str, ...] = ()  # every file written: LoRA, card, preview, workflows
    best_way: str = ""  # the way the card leads with
    measured_on: str = ""  # run | demo_world

    def to_dict(self) -> dict:
        return asdict(self)


def default_name(source: ExportSource) -> str:
    c = source.config
    what = c.objective if c.preference else c.token  # a KTO or DPO LoRA has no token of its own
    return safe_name(f"{what}-{source.run_id}-step{source.step}")


def safe_name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.+ -]", "_", text.strip()).lstrip(".- ")
    return cleaned[:100] or "wrong"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name.endswith((" ", ".")):
        raise NegaloraError(
            f"export name {name!r}: use letters, digits, '_', '-', '.', '+' and spaces (at most 100, "
            "not starting with '.' or a space)"
        )
    return name


def destination(home, fmt: str, name: str, out: str | None) -> Path:
    """Where the LoRA goes: ``out`` (a .safetensors file, or a folder to put it in), else the home's
    exports folder; a diffusers export is a folder holding pytorch_lora_weights.safetensors."""
    file_name = DIFFUSERS_FILE if fmt == "diffusers" else f"{name}.safetensors"
    if out is None:
        return (home.exports / name / file_name) if fmt == "diffusers" else home.exports / file_name
    path = Path(out).expanduser()
    if path.is_dir():
        return (path / file_name).resolve()
    if path.suffix.lower() != ".safetensors":
        raise NegaloraError(f"{path}: the export must be a .safetensors file (or an existing folder)")
    return path.resolve()


def companions(dest: Path) -> tuple[Path, Path]:
    """The model card and the grid image beside a LoRA file. ``<name>.preview.png`` is the picture
    A1111's LoRA tab shows for ``<name>.safetensors``; a diffusers folder gets README.md (the model
    card's name on the Hub) and grid.png."""
    if dest.name == DIFFUSERS_FILE:
        return dest.parent / "README.md", dest.parent / "grid.png"
    return dest.with_suffix(".md"), dest.with_name(f"{dest.stem}.preview.png")


def plan_export(store, request: ExportRequest) -> ExportPlan:
    """Everything an export will write, computed without writing anything."""
    if request.fmt not in FORMATS:
        raise NegaloraError(f"format {request.fmt!r}: choose {' or '.join(FORMATS)}")
    source = find_source(store, request.run_id, request.step)
    if request.name and request.name.strip():
        name = check_name(request.name.strip())
    elif (
        request.out and Path(request.out).suffix.lower() == ".safetensors" and Path(request.out).name != DIFFUSERS_FILE
    ):
        name = safe_name(Path(request.out).stem)  # a file named by the user names the LoRA
    else:
        name = default_name(source)
    dest = destination(store.home, request.fmt, name, request.out)
    if dest.resolve() == source.path.resolve():
        raise NegaloraError(f"{dest}: is the training checkpoint itself; export somewhere else")
    tensors, header = read_checkpoint(source)
    modules = kohya_keys.lora_modules(tensors)
    components = sorted({c for c, _ in modules})
    alphas = kohya_keys.adapter_alphas(header, components, source.config.lora_alpha)
    alpha = alphas.get("unet", next(iter(alphas.values())))  # kohya's ss_network_alpha; each module keeps its own
    if request.fmt == "kohya":
        tensors = kohya_keys.to_kohya(tensors, alphas)
    else:
        tensors = {k: v.contiguous() for k, v in tensors.items()}
    grid = store.latest_grid(source.run_id)
    grid = grid if grid is not None and Path(grid).is_file() else None
    metadata = build_metadata(source, request.fmt, name, tensors, alpha, header, thumbnail_data_url(grid))
    card, grid_dest = companions(dest)
    evidence = ev.gather(store, source.run_id, source.step, liked=source.liked)
    text_encoder = any(c != "unet" for c in components)
    usage = _usage(store, source, request.fmt, name, dest, evidence, text_encoder)
    return ExportPlan(
        request,
        source,
        name,
        dest,
        card,
        grid,
        grid_dest,
        alpha,
        len(modules),
        tensors,
        metadata,
        evidence,
        usage,
        dest.parent / usage.workflow,
        dest.parent / usage.api_workflow,
    )


PLACEHOLDER_CKPT = "PICK-YOUR-SDXL-BASE.safetensors"


def _usage(store, source: ExportSource, fmt: str, name: str, dest: Path, evidence, text_encoder: bool) -> Usage:
    """The card's test recipe and where things are: the model's default test set's first prompt and
    CFG, the run's base model as diffusers and ComfyUI name it."""
    from negalora.compare import prompt_sets
    from negalora.errors import NegaloraError
    from negalora.schedulers import DEFAULT_SCHEDULER

    location = source.base_location
    path = Path(location).expanduser() if location else None
    if location == "demo":
        kind, base_path = "demo", str(store.home.models / "demo")
    elif path is not None and path.is_file():
        kind, base_path = "file", str(path.resolve())
    elif path is not None and path.is_dir():
        kind, base_path = "folder", str(path.resolve())
    else:
        kind, base_path = "hub", location or "stabilityai/stable-diffusion-xl-base-1.0"
    model_source = "demo" if kind == "demo" else kind
    set_name = prompt_sets.default_set_name(model_source)
    try:
        prompts = store.prompt_set(set_name)["prompts"]
    except NegaloraError:  # not made yet: the set it will be made with
        prompts = prompt_sets.DEMO_PROMPTS if set_name == prompt_sets.DEMO_SET else prompt_sets.DEFAULT_PROMPTS
    size = resolution(source)
    stem = dest.stem if fmt == "kohya" else name
    own = "positive" if source.liked else "negative"  # the pass the LoRA is made for
    passes = "both" if evidence.best == ev.BOTH_PASSES else own
    return Usage(
        prompt=prompts[0],
        seed=1,
        steps=prompt_sets.DEMO_STEPS if kind == "demo" else 25,
        guidance=prompt_sets.default_guidance(model_source),
        scheduler=DEFAULT_SCHEDULER,
        width=size,
        height=size,
        base_kind=kind,
        base_path=base_path,
        ckpt_name=Path(base_path).name if kind == "file" else PLACEHOLDER_CKPT,
        ckpt_known=kind == "file",
        lora_dir=str(dest.parent),
        lora_file=dest.name,
        comfy_lora_name=dest.name if fmt == "kohya" else f"{name}/{DIFFUSERS_FILE}",
        workflow=f"{stem}.comfyui.json",
        api_workflow=f"{stem}.comfyui-api.json",
        workflow_form=comfyui.form_for(passes, text_encoder),
        run_id=source.run_id,
        step=source.step,
        prompt_set=set_name,
    )


def _read_back(tmp: Path, plan: ExportPlan) -> None:
    """The temp file holds exactly the tensors and metadata meant for it."""
    try:
        with safe_open(str(tmp), framework="pt", device="cpu") as fh:
            if dict(fh.metadata() or {}) != plan.metadata or set(fh.keys()) != set(plan.tensors):
                raise NegaloraError(f"{tmp}: the written header is not the one meant")
            for key in fh.keys():
                if not torch.equal(fh.get_tensor(key), plan.tensors[key]):
                    raise NegaloraError(f"{tmp}: tensor {key} did not survive the write")
    except SafetensorError as exc:
        raise NegaloraError(f"{tmp}: the written file does not read back ({exc})") from exc


def run_export(
    store,
    plan: ExportPlan,
    generator=None,
    on_event: Callable[[dict], None] | None = None,
    cancel: CancelToken | None = None,
) -> ExportResult:
    """Write, check and record a planned export. ``generator`` (on the run's base model) is needed
    unless the request turns verification off."""
    started = time.monotonic()
    emit = on_event or (lambda e: None)
    cancel = cancel or CancelToken()
    request = plan.request
    if request.verify and generator is None:
        raise NegaloraError("verifying an export needs the run's base model loaded")

    def stage(name: str, text: str) -> None:
        cancel.raise_if_cancelled()
        emit({"type": "export_stage", "stage": name, "message": text})

    stage("writing", f"Writing {plan.dest.name}")
    writer.clean_stale_temps(plan.dest.parent)
    blob = writer.serialize(plan.tensors, plan.metadata)
    file_sha = hashlib.sha256(blob).hexdigest()
    temps = [writer.write_temp(plan.dest, blob)]
    del blob
    try:
        stage("reading_back", "Reading the written file back")
        _read_back(temps[0], plan)
        verification = {"verified": False, "reason": "--no-verify"}
        if request.verify and generator is not None:  # checked above
            from negalora.export.verify import verify_export

            stage("verifying", "Reloading it with diffusers and rendering a test image")
            verification = verify_export(generator, plan.source, temps[0], plan.modules, cancel=cancel).to_dict()
        # The card and grid are written before the LoRA is replaced, so a full disk fails the export
        # while the old file is still in place; after it, only renames are left.
        ui, api = plan.workflows()
        companions = [
            (plan.card, _card(plan, verification, file_sha).encode("utf-8")),
            (plan.workflow, comfyui.dumps(ui).encode("utf-8")),
            (plan.api_workflow, comfyui.dumps(api).encode("utf-8")),
        ]
        if plan.grid_source is not None:
            companions.append((plan.grid_dest, plan.grid_source.read_bytes()))
        for dest, data in companions:
            temps.append(writer.write_temp(dest, data))
        stage("replacing", f"Putting {plan.dest.name} in place")
        for tmp, dest in zip(temps, [plan.dest, *(d for d, _ in companions)], strict=True):
            writer.commit(tmp, dest)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    grid = str(plan.grid_dest) if plan.grid_source is not None else ""
    export_id = store.add_export(plan.source.run_id, plan.source.step, request.fmt, plan.dest, file_sha, plan.metadata)
    meta = plan.metadata
    hashes = {
        "sha256": file_sha,
        "sshs_model_hash": meta["sshs_model_hash"],
        "modelspec.hash_sha256": meta["modelspec.hash_sha256"],
        "sshs_legacy_hash": meta["sshs_legacy_hash"],
        "checkpoint_sha256": plan.source.sha256,
    }
    return ExportResult(
        export_id=export_id,
        run_id=plan.source.run_id,
        step=plan.source.step,
        fmt=request.fmt,
        path=str(plan.dest),
        sha256=file_sha,
        bytes=plan.dest.stat().st_size,
        model_card=str(plan.card),
        grid=grid,
        metadata=meta,
        verification=verification,
        hashes={k: {"value": v, "covers": HASH_NOTES[k]} for k, v in hashes.items()},
        seconds=round(time.monotonic() - started, 3),
        comfyui_workflow=str(plan.workflow),
        comfyui_api_workflow=str(plan.api_workflow),
        files=tuple(str(p) for p in (plan.dest, plan.card, plan.workflow, plan.api_workflow))
        + ((grid,) if grid else ()),
        best_way=plan.evidence.best,
        measured_on=plan.evidence.source,
    )


def _card(plan: ExportPlan, verification: dict, file_sha: str) -> str:
    return (liked_model_card if plan.source.liked else model_card)(
        name=plan.name,
        fmt=plan.request.fmt,
        file_name=plan.dest.name,
        source=plan.source,
        metadata=plan.metadata,
        alpha=plan.alpha,
        verification=verification,
        file_sha256=file_sha,
        grid_name=plan.grid_dest.name if plan.grid_source is not None else None,
        evidence=plan.evidence,
        usage=plan.usage,
    )


def export_lora(
    store,
    request: ExportRequest,
    generator=None,
    on_event: Callable[[dict], None] | None = None,
    cancel: CancelToken | None = None,
) -> ExportResult:
    return run_export(store, plan_export(store, request), generator, on_event, cancel)
