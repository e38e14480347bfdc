"""The gallery's commands: ``negalora rate``, ``negalora import`` and ``negalora list``. They only
touch the store, so they never import torch."""

import json
import sys
from pathlib import Path

from negalora.cli.common import add_common, emit, positive_int


def add_parsers(sub) -> None:
    r = sub.add_parser("rate", help="reject, pick or clear images")
    r.add_argument("image_id", nargs="+", type=int, metavar="IMAGE_ID")
    r.add_argument("verdict", choices=["reject", "pick", "clear"])
    r.add_argument("--reason", action="append", default=[], metavar="R", help="a reason tag (repeatable), e.g. hands")
    add_common(r)

    i = sub.add_parser(
        "import",
        help="import image files or folders into the store",
        description="Import images. Refused files are listed on stderr; the exit code is 2 only when "
        "nothing could be imported.",
    )
    i.add_argument("path", nargs="+", type=Path)
    i.add_argument("--reject", action="store_true", help="mark the imported images rejected")
    i.add_argument("--reason", action="append", default=[], metavar="R", help="reason tag for --reject (repeatable)")
    add_common(i)

    lst = sub.add_parser("list", help="list images, runs, models, comparisons or blind-vote results")
    lst.add_argument("what", choices=["images", "runs", "models", "comparisons", "votes"])
    lst.add_argument("--rating", choices=["reject", "pick", "unrated"], help="only images with this rating")
    lst.add_argument("--search", metavar="TEXT", help="only images whose prompt contains TEXT")
    lst.add_argument("--limit", type=positive_int, metavar="N")
    add_common(lst)


def cmd_rate(args) -> int:
    from negalora.home import resolve_home
    from negalora.store import Store

    verdict = None if args.verdict == "clear" else args.verdict
    with Store(resolve_home(args.home)) as store:
        store.rate(args.image_id, verdict, args.reason or None)
        counts = store.counts()
    emit(
        args,
        {"rated": args.image_id, "verdict": args.verdict, "reasons": sorted(set(args.reason)), "counts": counts},
        [
            f"{args.verdict}: {', '.join(f'#{i}' for i in args.image_id)}  "
            f"({counts['reject']} rejected, {counts['pick']} picked)"
        ],
    )
    return 0


def cmd_import(args) -> int:
    from negalora.home import resolve_home
    from negalora.importing import import_files
    from negalora.store import Store

    with Store(resolve_home(args.home)) as store:
        done, refused = import_files(store, args.path, reject=args.reject, reasons=tuple(args.reason))
    for r in refused:
        print(f"negalora: refused {r.path}: {r.reason}", file=sys.stderr)
    emit(
        args,
        {
            "imported": [{"id": d.id, "path": str(d.path), "sha256": d.sha256, "duplicate": d.duplicate} for d in done],
            "refused": [{"path": str(r.path), "reason": r.reason} for r in refused],
        },
        [f"#{d.id}  {d.path}" + ("  (already in the store)" if d.duplicate else "") for d in done],
    )
    if refused and not done:
        return 2
    return 0


def cmd_list(args) -> int:
    from negalora.home import resolve_home
    from negalora.store import Store

    with Store(resolve_home(args.home)) as store:
        if args.what == "images":
            rows = store.images(args.rating, args.search, args.limit)
            lines = [
                f"#{r['id']:<6} {r['verdict'] or '-':7} {r['source']:9} "
                f"seed {r['seed'] if r['seed'] is not None else '-':<10} "
                f"{(r['prompt'] or r['original_name'])[:60]}"
                for r in rows
            ]
        elif args.what == "comparisons":
            rows = store.comparisons()
            lines = [
                f"#{r['id']:<5} {r['kind']:16} {r['status']:9} run {r['run_id'] or '-'} step {r['step'] or '-'}  "
                f"{r['grid_path'] or '-'}"
                for r in rows
            ]
        elif args.what == "votes":
            from negalora.compare.votes import win_rates

            rates = win_rates(store.votes())
            rows = [w.to_dict() for w in rates]
            lines = [w.describe() for w in rates]
        elif args.what == "models":
            rows = store.models()
            lines = [f"#{r['id']:<4} {r['name']:24} {r['source']:7} {r['hash'][:10]}  {r['location']}" for r in rows]
        else:
            rows = store.runs()
            for r in rows:
                r["config"] = json.loads(r["config"])
            lines = [
                f"{r['id']}  {r['status']:11} step {r['steps_done']:>6}/{r['config']['steps']:<6} "
                f"{r['images']} images  loss {r['final_loss'] if r['final_loss'] is not None else '-'}"
                for r in rows
            ]
    emit(args, {args.what: rows}, lines or [f"no {args.what}"])
    return 0


COMMANDS = {"rate": cmd_rate, "import": cmd_import, "list": cmd_list}
