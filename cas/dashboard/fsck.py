"""The record of the last ``cas fsck``: ``STORE/fsck-last.json``, written by the command, read by the dashboard."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from casformat.errors import DocumentError
from casformat.times import format_epoch, parse_time
from deltagen.output import write_atomic

FSCK_FILE = "fsck-last.json"
LISTED = 100  # corrupt, quarantined and missing digests kept in the record (the counts are complete)


def fsck_path(store: Path) -> Path:
    """Where the record of ``store`` lives."""
    return Path(store) / FSCK_FILE


def record_fsck(store: Path, data: dict[str, Any], started: float, finished: float) -> dict[str, Any]:
    """Keep the result of ``cas fsck`` in STORE/fsck-last.json (written atomically)."""
    record = {"started": format_epoch(started), "finished": format_epoch(finished),
              "duration_seconds": round(finished - started, 3),
              "ok": (not data.get("corrupt") and not data.get("missing_referenced")
                     and not (data.get("variants") or {}).get("corrupt")),
              "checked": data.get("checked"), "bytes": data.get("bytes"),
              "corrupt": list(data.get("corrupt", []))[:LISTED], "corrupt_count": len(data.get("corrupt", [])),
              "quarantined": list(data.get("quarantined", []))[:LISTED],
              "missing_referenced": list(data.get("missing_referenced", []))[:LISTED],
              "missing_count": len(data.get("missing_referenced", [])),
              "dangling": list(data.get("dangling", []))[:LISTED],
              "stray_temp": data.get("stray_temp"),
              "corrupt_variants": list((data.get("variants") or {}).get("corrupt", []))[:LISTED]}
    write_atomic(fsck_path(store), json.dumps(record, indent=1, sort_keys=True).encode())
    return record


def last_fsck(store: Path) -> dict[str, Any] | None:
    """The last record with its ``age_seconds``; None before the first fsck, an error when unreadable."""
    try:
        record = json.loads(fsck_path(store).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": f"unreadable {FSCK_FILE}: {exc}"}
    if isinstance(record, dict) and isinstance(record.get("finished"), str):
        try:
            record["age_seconds"] = int(time.time() - parse_time(record["finished"]).timestamp())
        except DocumentError:
            pass
    return record
