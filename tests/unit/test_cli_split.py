"""The offline commands come from the ``recsvc.commands`` entry point, so a serving-only
install (the Docker image's wheel, built from ``recsvc/`` alone) has just serve and ingest."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from recsvc.cli import main

REPO = Path(__file__).resolve().parents[2]


def usage(capsys: pytest.CaptureFixture[str], plugins: list | None) -> str:
    with pytest.raises(SystemExit):
        main(["--help"], plugins=plugins)
    return capsys.readouterr().out


def test_the_source_install_registers_the_offline_commands(capsys) -> None:
    text = usage(capsys, None)
    for command in ("pipeline", "eval", "train", "serve", "ingest"):
        assert f"    {command} " in text


def test_without_the_offline_package_an_offline_command_says_where_it_is(capsys) -> None:
    assert "pipeline" not in usage(capsys, [])
    assert main(["pipeline", "--events", "x.csv"], plugins=[]) == 2
    err = capsys.readouterr().err
    assert "recsvc pipeline: not in this install" in err and "serve, ingest" in err
    assert main(["-v", "eval", "--bundle", "b"], plugins=[]) == 2
    assert "recsvc eval: not in this install" in capsys.readouterr().err


def test_the_parser_loads_no_offline_module_beyond_its_flags() -> None:
    code = (
        "import sys; from recsvc.cli import build_parser; build_parser();"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('offline', 'training', 'tensorflow')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "['offline', 'offline.cli']"


@pytest.mark.slow
def test_the_serving_wheel_has_no_offline_code_and_no_offline_commands(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(
        REPO / "recsvc", tree / "recsvc", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(tree)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("recsvc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    assert {n.split("/")[0] for n in names if not n.startswith("recsvc")} == set()
    parsed = configparser.ConfigParser()
    parsed.read(next((tmp_path / "site").glob("recsvc-*.dist-info/entry_points.txt")))
    assert dict(parsed["console_scripts"]) == {"recsvc": "recsvc.cli:main"}
    assert not parsed.has_section("recsvc.commands") or not dict(parsed["recsvc.commands"])

    # The installed wheel alone on the path (-S: no site-packages, so no source install).
    run = subprocess.run(
        [sys.executable, "-S", "-c", "import sys; from recsvc.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "pipeline", "--events", "x.csv"],
        capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path / "site")},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "not in this install" in run.stderr and "Traceback" not in run.stderr
