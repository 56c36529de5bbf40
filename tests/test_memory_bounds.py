"""What a long-running server keeps stays bounded (issue 14, item 7).

The soak found the server's open files (and with them its memory) rising: each
thread of the server's pool opened its own SQLite connection, the pool replaces
idle threads, and the connections of ended threads stayed open."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from cas.metadata import SqliteMetadata


def _open_db_files(db: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(db)):
                count += 1
        except OSError:
            pass
    return count


def test_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    meta = SqliteMetadata(db)
    meta.get_root()
    before = _open_db_files(db)
    for _ in range(30):  # what the thread pool does over hours: threads come and go
        t = threading.Thread(target=meta.get_root)
        t.start()
        t.join()
    # This thread's connection and at most the last ended thread's (closed when the next opens).
    assert _open_db_files(db) <= before + 3, f"{_open_db_files(db)} files of meta.db open after 30 threads"
    meta.close()


def test_connections_stay_bounded_on_every_backend(metadata_url: str) -> None:
    from cas.metadata import open_metadata
    meta = open_metadata(metadata_url, Path("/nonexistent"))
    try:
        for _ in range(20):
            t = threading.Thread(target=meta.get_root)
            t.start()
            t.join()
        assert meta.open_connections() <= 3, f"{meta.open_connections()} connections after 20 ended threads"
    finally:
        close_all = getattr(meta, "close_all", meta.close)
        close_all()
