"""The online processes load without TensorFlow or the offline packages (see Dockerfile)."""

import subprocess
import sys


def test_serve_ingest_and_gateway_import_no_tensorflow() -> None:
    code = (
        "import sys, recsvc.cli, recsvc.server, recsvc.ingest, recsvc.client, recsvc.gateway;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'offline', "
        "'training', 'scipy', 'annoy', 'pyarrow'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
