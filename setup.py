"""Build of the two compiled request-path modules; everything else is in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "recsvc._scoring",
            ["recsvc/_scoring.c"],
            # -ffp-contract=off: no fused multiply-adds, so a score is the same bits
            # whatever CPU flags the build used (the module's sums have a fixed order).
            extra_compile_args=["-O3", "-ffp-contract=off"],
        ),
        Extension("recsvc._wire", ["recsvc/_wire.c"], extra_compile_args=["-O2"]),
    ]
)
