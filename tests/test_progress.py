"""Progress bars on `seed` and `import-csv`: drawn for a person at a terminal, absent from logs."""

import subprocess
import sys

from tests.support.project import HEADER_HINT, REPO
from tests.support.terminal import stderr_in_a_terminal


def run_with_tty_stderr(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """The CLI with stderr on a 100-column terminal (as in a shell): (code, stdout, what the terminal showed)."""
    return stderr_in_a_terminal([sys.executable, "-m", "potability.cli", *args], cwd=REPO, env=env)


def test_a_terminal_sees_the_bars(clean_db, cli_env, tmp_path):
    code, stdout, tty = run_with_tty_stderr(["seed", "--rows", "2500", "--seed", "8"], cli_env)
    assert code == 0 and "inserted 2500" in stdout
    assert "seed: 100%" in tty and "2.50k/2.50k" in tty
    assert "%|" not in stdout  # the answer on stdout stays parseable
    csv = tmp_path / "lab.csv"
    csv.write_text(HEADER_HINT + "7,200,20000,7,300,400,14,60,4,1\n" * 3)
    code, stdout, tty = run_with_tty_stderr(["import-csv", str(csv)], cli_env)
    assert code == 0 and "inserted 3" in stdout
    assert "import lab.csv: 100%" in tty


def test_logs_and_pipes_see_no_bars(clean_db, cli_env, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "potability.cli", "seed", "--rows", "2500", "--seed", "8"],
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "inserted 2500" in result.stdout
    assert "%|" not in result.stderr and "\r" not in result.stderr
