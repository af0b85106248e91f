"""How often a bundle's pools hold the held-out next item, and which source put it there.

    python -m offline.evaluation.pool_coverage --bundle .local/tune/tb-pssq-20

Prints the share of held-out cases whose next item is in the current item's pool, and, for
those, the share proposed by each source (a candidate can carry several source bits).
"""

from __future__ import annotations

import argparse

import numpy as np

from offline.evaluation.evaluate import cases_from_bundle
from recsvc.bundle import load_bundle
from recsvc.contract import SOURCE_BITS


def pool_coverage(bundle_path: str) -> dict[str, float]:
    """``{"target_in_pool": share, "<source>": share of in-pool targets it proposed}``."""
    bundle = load_bundle(bundle_path, verify=False)
    cases = cases_from_bundle(bundle)
    pools = np.asarray(bundle["pools"])[cases.current]
    flags = np.asarray(bundle["pool_sources"])[cases.current]
    found = pools == cases.target[:, None]
    present = found.any(axis=1)
    target_flags = flags[np.arange(len(cases)), found.argmax(axis=1)][present]
    shares = {"target_in_pool": float(present.mean())}
    shares.update(
        {name: float(((target_flags & bit) > 0).mean()) for name, bit in SOURCE_BITS.items()}
    )
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, action="append", help="repeatable")
    for path in parser.parse_args().bundle:
        shares = pool_coverage(path)
        print(path, " ".join(f"{k}={100 * v:.1f}%" for k, v in shares.items()))


if __name__ == "__main__":
    main()
