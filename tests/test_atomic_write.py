"""Files several processes replace at once (the model cache's champion pointer) never fail a writer."""

from __future__ import annotations

import json
import multiprocessing

from potability import artifacts

WRITES = 300


def _write_many(path: str, writer: int, failures) -> None:
    from pathlib import Path

    for i in range(WRITES):
        try:
            artifacts.write_json_atomic(Path(path), {"writer": writer, "write": i})
        except OSError as exc:
            failures.put(f"writer {writer}, write {i}: {exc}")
            return


def test_processes_replacing_one_file_at_once_all_succeed(tmp_path):
    # a server's start: two workers, the renderer and the page listener each record the champion
    path = tmp_path / "champion.json"
    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    writers = [context.Process(target=_write_many, args=(str(path), n, failures)) for n in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=60)
    assert [p.exitcode for p in writers] == [0, 0, 0, 0]
    assert failures.empty(), failures.get()
    assert json.loads(path.read_text())["write"] == WRITES - 1  # whole, one writer's last
    assert [p.name for p in tmp_path.iterdir()] == ["champion.json"]  # no temporary left behind
    assert path.stat().st_mode & 0o777 == 0o644
