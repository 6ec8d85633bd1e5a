"""Progress reporting seam: library functions report through a `Progress`; only the CLI renders it (rich)."""

from __future__ import annotations


class Progress:
    """Silent by default. `stage` starts a bar of `total` steps, `advance` moves it, `note` is a message."""

    def stage(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, message: str) -> None:
        pass


SILENT = Progress()
