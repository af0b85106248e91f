"""Build of the four compiled request-path modules and the entry points; the rest is in
setup.cfg.

The offline commands are registered only when the tree has ``offline/``: the serving image
builds its wheel from ``recsvc/`` alone (see the Dockerfile), and that wheel then has only
``recsvc serve`` and ``recsvc ingest``.
"""

from pathlib import Path

from setuptools import Extension, setup

HAS_OFFLINE = (Path(__file__).parent / "offline").is_dir()

setup(
    ext_modules=[
        Extension(
            "recsvc._scoring",
            ["recsvc/_scoring.c"],
            depends=["recsvc/_buffers.h", "recsvc/_model.h"],
            # -ffp-contract=off: no fused multiply-adds, so a score is the same bits
            # whatever CPU flags the build used (the module's sums have a fixed order).
            extra_compile_args=["-O3", "-ffp-contract=off"],
        ),
        Extension(
            "recsvc._second_stage",
            ["recsvc/_second_stage.c"],
            depends=["recsvc/_buffers.h", "recsvc/_model.h"],
            extra_compile_args=["-O3", "-ffp-contract=off"],
        ),
        Extension("recsvc._wire", ["recsvc/_wire.c"], extra_compile_args=["-O2"]),
        Extension(
            "recsvc._live",
            ["recsvc/_live.c"],
            extra_compile_args=["-O2", "-ffp-contract=off"],
        ),
    ],
    entry_points={
        "console_scripts": ["recsvc = recsvc.cli:main"],
        "recsvc.commands": ["offline = offline.cli:register"] if HAS_OFFLINE else [],
    },
)
