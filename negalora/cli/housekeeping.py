"""The housekeeping commands: check the database and files, restore a backup, delete images. They
only touch the store, so they never import torch."""

import sys

from negalora.cli.common import add_common, emit


def add_parsers(sub) -> None:
    c = sub.add_parser(
        "check",
        help="check the database and reconcile it with the files on disk",
        description="Run SQLite's quick_check, take the day's backup, and bring the database and the files "
        "into agreement: missing image files are flagged (their ratings kept), image files the database does "
        "not know are adopted, leftovers of interrupted writes are removed. The app does this at every start.",
    )
    add_common(c)

    r = sub.add_parser(
        "restore-backup",
        help="put a database backup in place of a damaged database",
        description="A copy of the current database (and its -wal and -shm) goes to <home>/damaged/<time>/, "
        "never deleted; then the backup takes its place. A sound database is replaced only with --force. "
        "Backups are taken before each migration and daily.",
    )
    r.add_argument("--backup", metavar="FILE", help="the backup to restore (default: the newest sound one)")
    r.add_argument("--list", action="store_true", help="list the backups, newest first, and change nothing")
    r.add_argument("--force", action="store_true", help="replace a sound database too (close negalora first)")
    add_common(r)

    d = sub.add_parser(
        "delete",
        help="delete images, their ratings and their files",
        description="Images used by a comparison or a blind vote are kept (the command fails and nothing is deleted).",
    )
    d.add_argument("image_id", type=int, nargs="+", metavar="IMAGE_ID")
    add_common(d)


def cmd_check(args) -> int:
    from negalora.home import resolve_home
    from negalora.store import Store
    from negalora.store.reconcile import reconcile

    with Store(resolve_home(args.home)) as store:  # raises DatabaseDamaged, with the backup to restore
        report = reconcile(store)
        counts = store.counts()
        backup_error = store.backup_error
    if backup_error:
        print(f"negalora: warning: {backup_error}", file=sys.stderr)
    emit(
        args,
        {"database": "ok", "counts": counts, **report.to_dict()},
        ["database: ok", *report.lines()] + ([] if report.changed else ["files: in agreement"]),
    )
    return 0


def cmd_restore_backup(args) -> int:
    from pathlib import Path

    from negalora.home import resolve_home
    from negalora.store.backups import backups, restore_backup, taken_at
    from negalora.store.health import check_file

    home = resolve_home(args.home)
    if args.list:
        found = backups(home)
        emit(
            args,
            {"backups": [str(p) for p in found]},
            [f"{taken_at(p):%Y-%m-%d %H:%M:%S} UTC  {p}" for p in found] or ["no backups"],
        )
        return 0
    damage = check_file(home.db_path)
    chosen, aside = restore_backup(home, Path(args.backup).expanduser() if args.backup else None, force=args.force)
    emit(
        args,
        {
            "restored": str(chosen),
            "kept_aside": str(aside) if aside else None,
            "was": damage.reason if damage else "ok",
        },
        [f"restored {chosen}"] + ([f"the previous database is kept in {aside}"] if aside else []),
    )
    return 0


def cmd_delete(args) -> int:
    from negalora.home import resolve_home
    from negalora.store import Store

    with Store(resolve_home(args.home)) as store:
        deleted = store.delete_images(args.image_id)
        counts = store.counts()
    emit(
        args,
        {"deleted": deleted, "counts": counts},
        [f"deleted {', '.join(f'#{i}' for i in deleted)}  ({counts['all']} images left)"],
    )
    return 0


COMMANDS = {"check": cmd_check, "restore-backup": cmd_restore_backup, "delete": cmd_delete}
