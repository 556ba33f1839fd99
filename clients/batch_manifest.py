"""``DIR/manifest.jsonl`` of ``tddfa batch``: one JSON line per finished input (input,
output, status done | failed | skipped, error, frames, seconds), append-only; the last
record of an input wins, so a rerun skips what is done and retries the rest."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from tddfa_clients.batch_jobs import Job

LOG = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
DONE, FAILED, SKIPPED = "done", "failed", "skipped"


class Manifest:
    """Append-only JSON Lines record of the batch; the last record per input wins."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}
        if path.exists():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self.records[record["input"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    # a line cut short by a crash: ignore it, the input is redone
                    LOG.warning("%s:%d: ignoring a damaged record", path, number)

    def made(self, job: Job) -> bool:
        """The manifest recorded ``job``'s output done (it may since have been removed)."""
        record = self.records.get(str(job.source))
        return bool(
            record and record.get("status") == DONE and record.get("output") == str(job.output)
        )

    def is_done(self, job: Job) -> bool:
        return self.made(job) and job.output.exists() and (job.mesh is None or job.mesh.exists())

    def add(
        self, job: Job, status: str, error: str | None = None, frames: int = 0, seconds: float = 0.0
    ) -> dict:
        record = {
            "input": str(job.source),
            "output": str(job.output),
            "status": status,
            "error": error,
            "frames": frames,
            "seconds": round(seconds, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        line = json.dumps(record) + "\n"
        with self._lock:
            # one write per record: a crash loses at most this line, never earlier ones
            with open(self.path, "a") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self.records[record["input"]] = record
        return record
