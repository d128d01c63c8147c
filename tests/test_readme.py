"""The README's two commands are the ones CI and a new user run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [
        line for b in blocks[:2] for line in b.splitlines() if line and not line.startswith("#")
    ]


def test_readme_opens_with_the_main_job_and_the_test_command():
    main_job, tests = _readme_commands()
    assert main_job.startswith("pip install") and main_job.endswith("rpusim demo")
    assert tests.startswith("pip install") and "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
    _, tests = _readme_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci_lines
