"""The home directory: one folder that holds the database, images, runs, exports and settings."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from negalora.atomic import atomic_write_text
from negalora.errors import NegaloraError


@dataclass(frozen=True)
class Home:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def db_path(self) -> Path:
        return self.root / "negalora.db"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def comparisons(self) -> Path:
        return self.root / "comparisons"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def create(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NegaloraError(f"{self.root}: cannot create home directory ({exc.strerror or exc})") from exc

    @property
    def settings_path(self) -> Path:
        return self.root / "settings.json"

    def settings(self) -> dict:
        try:
            data = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise NegaloraError(f"{self.settings_path}: unreadable settings ({exc})") from exc
        return data if isinstance(data, dict) else {}

    def save_settings(self, data: dict) -> None:
        self.create()
        atomic_write_text(self.settings_path, json.dumps(data, indent=2, sort_keys=True))


def resolve_home(arg: str | os.PathLike | None = None) -> Home:
    """--home, else $NEGALORA_HOME, else the platform's user-data directory."""
    raw = arg or os.environ.get("NEGALORA_HOME") or platformdirs.user_data_dir("negalora", appauthor=False)
    root = Path(raw).expanduser()
    if root.exists() and not root.is_dir():
        raise NegaloraError(f"{root}: home must be a directory")
    return Home(root.resolve())  # created on first write, so bad input leaves nothing behind
