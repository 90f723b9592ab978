"""Results written to a local outputs/ folder (CLI runs and `serve` on a workstation)."""
from __future__ import annotations

from pathlib import Path

from worker.storage.volume import FolderStore


class LocalStore(FolderStore):
    """Same atomic copy as the volume store; the folder is created on demand."""

    location = "local"

    def __init__(self, root: Path = Path("outputs")) -> None:
        super().__init__(Path(root).resolve())
