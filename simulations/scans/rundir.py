"""Run directories: the on-disk state of one scan, written so that it can always be resumed.

`<out>/<name>-<hash12>/` holds `config.json`, `provenance.json`, `plan.json`, one
`chunks/chunk-NNNNN.parquet` per finished chunk, `timings.json`, and at the end
`results.parquet`, `results.csv` and last the `DONE` marker. Every file is written atomically
(temporary file, `fsync`, rename), so a chunk file is complete or absent, even after SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .parameters import ScanError

if TYPE_CHECKING:
    from .config import ScanConfig

__all__ = ["RunDir", "atomic_write", "check_writable"]

_CHUNK_RE = re.compile(r"chunk-(\d{5,})\.parquet")


def check_writable(folder: Path) -> Path:
    """Create `folder` if needed and prove it is writable (before anything runs)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lsa-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ScanError(f"output folder {str(folder)!r} is not writable: {exc.strerror}.") from None
    return folder


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


class RunDir:
    """The on-disk state of one scan (see the module docstring for the layout)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.chunks = self.root / "chunks"

    @property
    def done(self) -> bool:
        return (self.root / "DONE").is_file() and (self.root / "results.parquet").is_file()

    def create(self, cfg: ScanConfig, plan: list[list[int]]) -> None:
        """Create the folder (config first, then plan) or check an existing one matches."""
        cfg_json = cfg.to_json()
        if (self.root / "config.json").is_file():
            old = json.loads((self.root / "config.json").read_text())
            if {k: old.get(k) for k in cfg.normalized()} != cfg.normalized():
                raise ScanError(
                    f"run directory {str(self.root)!r} holds a different configuration "
                    "(hash collision or edited files); remove it or rename the scan."
                )
            old_plan = json.loads((self.root / "plan.json").read_text())["chunks"]
            if old_plan != plan:
                raise ScanError(f"run directory {str(self.root)!r} holds a different chunk plan.")
            return
        self.chunks.mkdir(parents=True, exist_ok=True)
        from ..provenance import write_json

        write_json(self.root / "plan.json", {"chunks": plan})
        write_json(self.root / "config.json", cfg_json)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock (released by the OS even on SIGKILL)."""
        fh = open(self.root / ".lock", "w")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ScanError(
                    f"another process is running this scan ({self.root}); wait for it to finish."
                ) from None
            yield
        finally:
            fh.close()

    def clean_temporaries(self) -> None:
        for p in list(self.chunks.glob(".*.tmp-*")) + list(self.root.glob(".*.tmp-*")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def finished_chunks(self) -> dict[int, Path]:
        out = {}
        for p in self.chunks.glob("chunk-*.parquet"):
            m = _CHUNK_RE.fullmatch(p.name)
            if m:
                out[int(m.group(1))] = p
        return out

    def write_chunk(self, index: int, df: pd.DataFrame) -> None:
        path = self.chunks / f"chunk-{index:05d}.parquet"
        atomic_write(path, lambda p: df.to_parquet(p, index=False))

    def consolidate(self, expected_ids: Sequence[int], columns: Sequence[str]) -> pd.DataFrame:
        parts = [pd.read_parquet(p) for _, p in sorted(self.finished_chunks().items())]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
        df = df.sort_values("setting_id").reset_index(drop=True)
        ids = df["setting_id"].to_numpy()
        if len(ids) != len(set(ids.tolist())) or sorted(ids.tolist()) != sorted(expected_ids):
            raise ScanError(
                f"run directory {self.root} is inconsistent (duplicated or missing settings); "
                "remove its chunks folder and rerun."
            )
        atomic_write(self.root / "results.parquet", lambda p: df.to_parquet(p, index=False))
        atomic_write(self.root / "results.csv", lambda p: df.to_csv(p, index=False))
        return df

    def mark_done(self) -> None:
        atomic_write(self.root / "DONE", lambda p: _write_text(p, time.strftime("%FT%T%z\n")))


def write_provenance(run: RunDir, device: str | None, executor: str) -> None:
    """`provenance.json`: versions, device, git revision, executor and precision (earlier
    runs of a resumed scan are kept under `previous_runs`)."""
    import lsa
    from lsa.batch import select_device

    from ..provenance import provenance, write_json

    p = provenance()
    p["scan"] = {
        "executor": executor,
        "device_requested": device or os.environ.get("LSA_FLOW_DEVICE", "auto"),
        "device_used": str(select_device(device)),
        "precision": lsa.get_precision(),
    }
    path = run.root / "provenance.json"
    if path.is_file():  # keep the history of resumed runs
        old = json.loads(path.read_text())
        p["previous_runs"] = [*old.pop("previous_runs", []), old]
    write_json(path, p)


def write_timings(run: RunDir, timings: dict[str, Any]) -> None:
    from ..provenance import write_json

    write_json(run.root / "timings.json", timings)
