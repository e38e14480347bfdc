"""The Qt shell: windows, pages and widgets over the engine. It owns no logic the CLI needs."""
