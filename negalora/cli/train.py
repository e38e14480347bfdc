"""``negalora train``: train the 'wrong' LoRA from the rejected images."""

import os
import sys

from negalora.cli.common import add_common, emit, load_model_from_args, model_spec
from negalora.train.config import DEFAULT_BETA, OBJECTIVES, PICKS_TOKEN, SOURCES, VALIDATION_PASSES


def add_parsers(sub) -> None:
    # Every option whose dest is a TrainConfig field overrides the preset (train_overrides).
    t = sub.add_parser("train", help="train the 'wrong' LoRA from the rejected images")
    t.add_argument(
        "--preset",
        metavar="NAME",
        help="woolf, 12gb or cpu-demo (default: cpu-demo on the demo model, the recipe measured in "
        "docs/efficacy.md; woolf on an SDXL)",
    )
    t.add_argument("--token", metavar="T", help="instance token (default wrong)")
    t.add_argument("--rank", type=int, metavar="R")
    t.add_argument("--alpha", type=float, metavar="A", help="LoRA alpha (default: the rank)")
    t.add_argument("--feed-forward", action="store_true", default=None, help="also adapt the feed-forward layers")
    t.add_argument("--train-text-encoder", action="store_true", default=None, help="a LoRA on both text encoders too")
    t.add_argument("--steps", type=int, metavar="N")
    t.add_argument("--lr", type=float, metavar="X")
    t.add_argument("--lr-schedule", metavar="S", help="constant, constant_with_warmup or cosine")
    t.add_argument("--warmup", type=int, dest="warmup_steps", metavar="N")
    t.add_argument("--resolution", type=int, metavar="N", help="default: the model's native size")
    t.add_argument("--batch", type=int, metavar="B")
    t.add_argument("--grad-accum", type=int, metavar="N")
    t.add_argument("--flip", action="store_true", default=None, help="random horizontal flips")
    t.add_argument("--min-snr", type=float, dest="min_snr_gamma", metavar="G", help="min-SNR gamma (e.g. 5)")
    t.add_argument("--noise-offset", type=float, metavar="X")
    t.add_argument("--optimizer", metavar="O", help="adamw or adamw8bit (CUDA, needs the cuda extra)")
    t.add_argument("--mixed-precision", metavar="P", help="auto, no, bf16 or fp16")
    t.add_argument("--gradient-checkpointing", action="store_true", default=None)
    t.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
        help="torch.compile the UNet (default backend inductor): faster steps after a compile of a few "
        "minutes, so for long runs",
    )
    t.add_argument("--seed", type=int, metavar="S")
    t.add_argument("--checkpoint-every", type=int, metavar="N")
    t.add_argument("--keep-last", type=int, metavar="K", help="checkpoints kept (0: all)")
    t.add_argument("--validation-prompt", action="append", dest="validation_prompts", metavar="P")
    t.add_argument("--validation-steps", type=int, metavar="N", help="sampling steps of validation images (0: none)")
    t.add_argument(
        "--validation-passes",
        choices=VALIDATION_PASSES,
        help="the guidance passes the LoRA acts on in validation images (default: where its kind measured best: "
        "negative for a `wrong` LoRA, positive for a KTO, DPO or picks LoRA)",
    )
    t.add_argument(
        "--validation-cfg",
        type=float,
        dest="validation_guidance",
        metavar="G",
        help="CFG of validation images (default: the model's default test set's: 3 on the demo model, 7 on an SDXL)",
    )
    t.add_argument("--reason", action="append", dest="reasons", metavar="R", help="only rejects with this reason")
    t.add_argument("--captions-with-reasons", action="store_true", default=None, help='captions like "wrong, hands"')
    t.add_argument("--extra", action="append", metavar="PATH", help="more files or folders to train on")
    t.add_argument(
        "--prior-preservation", action="store_true", default=None, help="train beside class images from the base model"
    )
    t.add_argument("--class-prompt", metavar="P", help='caption of the class images (default "": unconditional)')
    t.add_argument("--class-images", type=int, metavar="N", help="class images (default: as many as the rejects)")
    t.add_argument("--prior-weight", type=float, metavar="W", help="weight of the class loss (default 1)")
    t.add_argument(
        "--objective",
        choices=OBJECTIVES,
        help="dreambooth: the rejects as the token (default); kto: every pick and reject with its own prompt "
        "(Diffusion-KTO); dpo: pairs of one prompt, from blind votes, then a pick and a reject (Diffusion-DPO)",
    )
    t.add_argument(
        "--source",
        choices=SOURCES,
        help="dreambooth: learn the token from the rejects (default; `wrong`, for the negative pass) or the "
        f"picks (`{PICKS_TOKEN}` unless --token; for --lora-passes positive)",
    )
    t.add_argument(
        "--beta",
        type=float,
        metavar="B",
        help="kto/dpo: how hard the preference pulls "
        f"(default kto {DEFAULT_BETA['kto']:g}, dpo {DEFAULT_BETA['dpo']:g})",
    )
    t.add_argument("--desirable-weight", type=float, metavar="W", help="kto: the picks' weight (default 1)")
    t.add_argument("--undesirable-weight", type=float, metavar="W", help="kto: the rejects' weight (default 1)")
    t.add_argument("--since", metavar="DATE", help="only rejects rated on or after this ISO date/time")
    t.add_argument("--until", metavar="DATE", help="only rejects rated on or before this ISO date/time")
    t.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    t.add_argument("--model", metavar="M")
    t.add_argument("--device", metavar="D")
    add_common(t)


def train_overrides(args) -> dict:
    """The preset overrides: every TrainConfig field the train parser has an option for, as given
    (None: the preset's value); a repeated option (--reason, --extra, --validation-prompt) as a tuple."""
    from dataclasses import fields

    from negalora.train.config import TrainConfig

    overrides = {}
    for f in fields(TrainConfig):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            overrides[f.name] = tuple(value) if isinstance(value, list) else value
    return overrides


def cmd_train(args) -> int:
    from negalora.home import resolve_home
    from negalora.train.config import default_preset, preset
    from negalora.train.trainer import Trainer

    config = preset(args.preset or default_preset(model_spec(args, resolve_home(args.home))), **train_overrides(args))
    config.check()
    home, model = load_model_from_args(args)
    from negalora.store import Store

    last = {}

    def on_event(e):
        if e["type"] == "preflight" and not args.json:
            for r in e["refused"]:
                print(f"negalora: refused {r['path']}: {r['reason']}", file=sys.stderr)
            for w in e["warnings"]:
                print(f"negalora: warning: {w}", file=sys.stderr)
            for x in e.get("left_out", []):
                print(f"negalora: left out {x['what']}: {x['reason']}", file=sys.stderr)
            if "labels" in e:
                print(f"negalora: kto: {e['labels']['pick']} picks, {e['labels']['reject']} rejects", file=sys.stderr)
            if "pairs" in e:
                print(f"negalora: dpo: {e['pairs']} pairs", file=sys.stderr)
        elif e["type"] == "train_step":
            last.update(e)
            if not args.json and (e["step"] % 10 == 0 or e["step"] == e["steps"]):
                margin = f"  margin {e['reward_margin']:+.4g}" if "reward_margin" in e else ""
                print(
                    f"step {e['step']}/{e['steps']}  loss {e['loss']:.4f}{margin}  {e['it_s']:.2f} it/s",
                    file=sys.stderr,
                )
        elif e["type"] == "nan_skip" and not args.json:
            print(f"negalora: step {e['step']}: non-finite loss, skipped", file=sys.stderr)

    import signal

    from negalora.cancel import CancelToken

    with Store(home) as store:
        cancel = CancelToken()
        trainer = Trainer(home, store, model, on_event=on_event, cancel=cancel)
        # The first Ctrl+C stops at the next step with a checkpoint (resume continues there); a second one aborts.
        previous = signal.getsignal(signal.SIGINT)

        def first_interrupt(signum, frame):
            print("negalora: stopping after this step (Ctrl+C again to abort)", file=sys.stderr)
            cancel.cancel()
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, first_interrupt)
        try:
            if args.resume:
                result = trainer.resume(args.resume)
            else:
                result = trainer.start(config, since=args.since, until=args.until)
        except KeyboardInterrupt:
            print("negalora: interrupted; resume with --resume", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGINT, previous)
    payload = {
        "run": result.run_id,
        "status": result.status,
        "steps_done": result.steps_done,
        "final_loss": result.final_loss,
        "checkpoints": result.checkpoints,
        "message": result.message,
    }
    lines = [
        f"run {result.run_id}: {result.status} at step {result.steps_done}"
        + (f", final loss {result.final_loss:.4f}" if result.final_loss is not None else "")
    ]
    lines += [f"  {c}" for c in result.checkpoints]
    if int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch` the main process reports
        emit(args, payload, lines)
    if result.status == "stopped_nan":
        print(f"negalora: error: {result.message}", file=sys.stderr)
        return 1
    if result.status == "paused":
        print(f"negalora: paused: {result.message} (negalora train --resume {result.run_id})", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"train": cmd_train}
