"""``negalora export``: a run's LoRA for A1111, ComfyUI (kohya) or diffusers, verified by reloading it."""

from negalora.cli.common import add_common, emit


def add_parsers(sub) -> None:
    ex = sub.add_parser(
        "export",
        help="export a run's LoRA for A1111, ComfyUI (kohya) or diffusers, verified by reloading it",
        description="Write a checkpoint of a training run as a LoRA file with header metadata and a model card "
        "beside it. Before the file is put in place it is reloaded with diffusers into the run's base model "
        "and must render the same image as the app does with the checkpoint (within 2/255).",
    )
    ex.add_argument("run_id", metavar="RUN_ID")
    ex.add_argument("--step", type=int, metavar="N", help="checkpoint step (default: the best step, else the last)")
    ex.add_argument("--format", required=True, choices=["kohya", "diffusers"], help="kohya: A1111 and ComfyUI")
    ex.add_argument(
        "--out",
        metavar="FILE",
        help="a .safetensors file or a folder (default: <home>/exports/NAME.safetensors; diffusers: "
        "<home>/exports/NAME/pytorch_lora_weights.safetensors)",
    )
    ex.add_argument(
        "--name", metavar="NAME", help="title and output name (default: the --out file's, else <token>-<run>-step<N>)"
    )
    ex.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the reload-and-render check (it needs the run's base model); the file is still read back",
    )
    ex.add_argument("--model", metavar="M", help="the run's base model, if it moved (must be the same model)")
    ex.add_argument("--device", metavar="D", help="cpu, cuda or mps")
    add_common(ex)


def cmd_export(args) -> int:
    from negalora.export import ExportRequest, plan_export, run_export
    from negalora.home import resolve_home
    from negalora.store import Store

    home = resolve_home(args.home)
    with Store(home) as store:
        request = ExportRequest(
            run_id=args.run_id,
            fmt=args.format,
            step=args.step,
            name=args.name,
            out=args.out,
            verify=not args.no_verify,
        )
        plan = plan_export(store, request)  # every input check before a model is loaded
        generator = None
        if request.verify:
            from negalora.device import choose_placement
            from negalora.generate import Generator
            from negalora.hashing import HashCache
            from negalora.models.loader import load_model

            model = load_model(args.model or plan.source.base_location, home, choose_placement(args.device))
            generator = Generator(model, HashCache(home.cache / "hashes.json"))
        result = run_export(store, plan, generator)
    v = result.verification
    check = (
        f"verified: {v['modules_loaded']}/{v['modules_in_file']} modules, max pixel difference "
        f"{v['max_pixel_diff']}/255"
        if v.get("verified")
        else "not verified (--no-verify)"
    )
    emit(
        args,
        {
            "run": result.run_id,
            "step": result.step,
            "format": result.fmt,
            "path": result.path,
            "sha256": result.sha256,
            "bytes": result.bytes,
            "model_card": result.model_card,
            "grid": result.grid,
            "export_id": result.export_id,
            "metadata": result.metadata,
            "hashes": result.hashes,
            "verification": v,
            "seconds": result.seconds,
            "comfyui_workflow": result.comfyui_workflow,
            "comfyui_api_workflow": result.comfyui_api_workflow,
            "files": list(result.files),
            "best_way": result.best_way,
            "measured_on": result.measured_on,
        },
        [
            f"{result.path}  ({result.fmt}, step {result.step}; {check})",
            f"  model card {result.model_card}",
            f"  ComfyUI workflow {result.comfyui_workflow} (API format: {result.comfyui_api_workflow})",
        ],
    )
    return 0


COMMANDS = {"export": cmd_export}
