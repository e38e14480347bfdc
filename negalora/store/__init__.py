"""The local store: SQLite database and content-addressed image files under the home directory."""

from negalora.store.db import Store

__all__ = ["Store"]
