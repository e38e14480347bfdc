"""The local store: SQLite database and content-addressed image files under the home directory.
Outside the package, import from here, not from its modules (an import-linter contract)."""

from negalora.store.clock import now
from negalora.store.db import Store, StoredImage

__all__ = ["Store", "StoredImage", "now"]
