"""Errors the user can act on. The CLI turns them into exit code 2 with a one-line reason."""


class NegaloraError(Exception):
    """Bad input or an unusable file: the message is one line that names the thing and the reason."""


class BadPrompt(NegaloraError):
    def __init__(self, prompt: str, column: int, reason: str):
        self.prompt = prompt
        self.column = column  # 0-based
        self.reason = reason
        super().__init__(f"bad prompt: {reason} at column {column + 1}: {prompt!r}")

    def pointer(self) -> str:
        """The prompt with a caret under the offending character, for multi-line displays."""
        return f"{self.prompt}\n{' ' * self.column}^ {self.reason}"


class Cancelled(Exception):
    """A job was cancelled by the user; whatever it was making is thrown away."""


class DiskFull(NegaloraError):
    """A write failed for lack of space; what was there before is untouched."""


class DatabaseDamaged(NegaloraError):
    """The database failed its health check at open; it was not written to."""

    def __init__(self, path, reason: str, backups: list):
        self.path, self.reason, self.backups = path, reason, list(backups)
        if self.backups:
            advice = (
                f"the latest backup is {self.backups[0]}; `negalora restore-backup` puts it in place "
                "(the damaged file is kept aside)"
            )
        else:
            advice = "there is no backup to restore"
        super().__init__(f"{path}: damaged database ({reason}); it was left untouched; {advice}")
