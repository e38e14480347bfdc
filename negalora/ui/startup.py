"""What the app does before its window opens: refuse a damaged database (offering the latest
backup), and after it opens: reconcile the files changed outside the app."""

from collections.abc import Callable

from negalora.errors import DatabaseDamaged, NegaloraError
from negalora.home import Home
from negalora.store import Store
from negalora.store.backups import restore_backup


def ask_restore(exc: DatabaseDamaged) -> bool:
    from PySide6.QtWidgets import QMessageBox

    box = QMessageBox(QMessageBox.Icon.Critical, "negalora: the database is damaged", "")
    box.setText(f"{exc.path} is damaged: {exc.reason}.\n\nIt was not changed and will be kept.")
    if not exc.backups:
        box.setInformativeText("There is no backup to restore. Move the file aside to start afresh.")
        box.setStandardButtons(QMessageBox.StandardButton.Close)
        box.exec()
        return False
    box.setInformativeText(f"Use the latest backup?\n{exc.backups[0]}")
    restore = box.addButton("Use the latest backup", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Quit", QMessageBox.ButtonRole.RejectRole)
    box.exec()
    return box.clickedButton() is restore


def open_database(home: Home, ask: Callable[[DatabaseDamaged], bool] = ask_restore) -> str | None:
    """Check the database before the window opens. Returns "" when it is sound, or a message when
    the artist chose to put the latest backup in place; raises DatabaseDamaged when they decline."""
    try:
        Store(home).close()
        return ""
    except DatabaseDamaged as exc:
        if not ask(exc):
            raise
        chosen, aside = restore_backup(home)
    Store(home).close()
    return f"Restored the backup {chosen.name}; the damaged database is kept in {aside}."


def reconcile_message(store: Store) -> str:
    from negalora.store.reconcile import reconcile

    try:
        report = reconcile(store)
    except (OSError, NegaloraError) as exc:  # a full disk or a file it may not touch: say so, open anyway
        return f"Could not check the files: {exc}"
    lines = report.lines() + ([store.backup_error] if store.backup_error else [])
    return "Checked the files: " + "; ".join(lines) if lines else ""
