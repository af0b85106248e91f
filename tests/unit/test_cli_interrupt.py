"""How ``recsvc`` ends when interrupted (Ctrl-C, or SIGTERM for the offline commands)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_an_interrupt_inside_a_string_exec_still_exits_130_under_python_m(tmp_path: Path) -> None:
    """A Ctrl-C or SIGTERM that lands while a dataclass or namedtuple makes its methods: the
    command says it was interrupted and exits 130, not by SIGINT (CPython's ``-m`` quirk)."""
    (tmp_path / "interrupted_command.py").write_text(
        "import sys\n"
        "from recsvc.cli import main\n"
        "def register(commands):\n"
        "    command = commands.add_parser('stopped')\n"
        "    command.set_defaults(run=lambda args: exec('raise KeyboardInterrupt', {}))\n"
        "sys.exit(main(['stopped'], plugins=[register]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "interrupted_command"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 130, run.stderr
    assert "recsvc stopped: interrupted" in run.stderr
