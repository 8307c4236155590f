"""What `potability reproduce` adds to the pipeline's own time (issue 20: at most 30 s on 3,300 rows).

In a fresh clone of HEAD, with its own embedded Postgres, a bare git remote and a DVC remote
folder: seed the rows, time `dvc repro`, commit the lock, push both remotes, deploy, then time
`potability reproduce` of that version (a second clone, `dvc pull`, the stages after export,
the comparison). Prints both times and the difference, and checks the rebuild says `identical`.

    python bench/reproduce.py [--rows 3300] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
GIT = ["git", "-c", "user.email=bench@example.org", "-c", "user.name=bench"]


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=3300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from potability import db

    with tempfile.TemporaryDirectory(prefix="bench-reproduce-") as tmp:
        top = Path(tmp)
        clone, remote = top / "repo", top / "remote.git"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "init", "--quiet", "--bare", str(remote)], check=True)
        subprocess.run(["git", "remote", "set-url", "origin", str(remote)], cwd=clone, check=True)
        subprocess.run(
            ["git", "push", "--quiet", "origin", "HEAD:refs/heads/main"], cwd=clone, check=True
        )
        pgdata = Path(tempfile.mkdtemp(prefix="bench-reproduce-pg-")) / "data"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("POTABILITY_", "MLFLOW_"))},
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "DATABASE_URL": db.embedded_server_url(pgdata),
            "POTABILITY_ROOT": str(clone),
            "POTABILITY_DVC_REMOTE": str(top / "dvc-remote"),
            "PYTHONWARNINGS": "ignore",
        }
        try:
            timed(["potability", "db", "migrate"], clone, env)
            timed(
                ["potability", "seed", "--rows", str(args.rows), "--seed", str(args.seed)],
                clone,
                env,
            )
            repro_s, _ = timed(["dvc", "repro"], clone, env)
            timed([*GIT, "add", "dvc.lock", "params.yaml", "metrics", "plots"], clone, env)
            timed([*GIT, "commit", "-qm", "bench decision"], clone, env)
            timed(["git", "push", "--quiet", "origin", "HEAD:refs/heads/main"], clone, env)
            timed(
                [
                    "dvc",
                    "remote",
                    "add",
                    "--local",
                    "--force",
                    "--default",
                    "bench",
                    str(top / "dvc-remote"),
                ],
                clone,
                env,
            )
            timed(["dvc", "push"], clone, env)
            _, out = timed(["potability", "deploy"], clone, env)
            version = out.strip().splitlines()[-1]
            reproduce_s, out = timed(
                [
                    "potability",
                    "reproduce",
                    "--version",
                    version,
                    "--workdir",
                    str(top / "rebuild"),
                ],
                clone,
                env,
            )
        finally:
            db.stop_embedded_server(pgdata, "immediate")
    assert out.strip().endswith("identical"), out
    print(
        json.dumps(
            {
                "machine": machine(),
                "load_average": os.getloadavg(),
                "rows": args.rows,
                "dvc_repro_s": round(repro_s, 1),
                "reproduce_s": round(reproduce_s, 1),
                "reproduce_minus_repro_s": round(reproduce_s - repro_s, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
