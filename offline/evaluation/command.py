"""``recsvc eval``: load a bundle, evaluate every method, print and write the results."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from offline.data.sequences import CONVERSION_NAMES
from offline.evaluation.evaluate import available_methods, evaluate
from offline.evaluation.report import format_differences, format_table, plot_hit_ratios, write_json
from offline.evaluation.served import candidate_settings
from offline.evaluation.session_knn import knn_params
from recsvc.bundle import load_bundle
from recsvc.exceptions import ConfigError


def run_eval(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    bundle = load_bundle(args.bundle)
    served = [p for p in args.param if p.startswith("candidates.")]
    knn = knn_params([p for p in args.param if not p.startswith("candidates.")])
    candidates = candidate_settings(bundle, served)
    if served and args.methods and "served" not in args.methods:
        raise ConfigError("--param candidates.* sets up served, which --methods leaves out")
    if candidates is not None and candidates.knn_items and "sessions/items" not in bundle:
        raise ConfigError(
            "--param candidates.knn_items needs the training sessions (sessions/*), which "
            "this bundle does not have: rebuild it with this version of recsvc pipeline"
        )
    if args.methods:
        unknown = sorted(set(args.methods) - set(available_methods(bundle)))
        if unknown:
            raise ConfigError(
                f"--methods: {', '.join(unknown)} not available for this bundle; it has "
                f"{', '.join(available_methods(bundle))}"
            )
    evaluation = evaluate(bundle, ks=args.k, methods=args.methods, knn=knn, candidates=candidates)
    result = evaluation.result()
    differences = evaluation.differences(seed=args.seed)
    split = bundle.manifest.get("split", {})
    held_out = split.get("test") if split.get("holdout") == "test" else split.get("validation_day")
    print(f"bundle {bundle.path} (version {bundle.version}), held out: {held_out}")
    print(format_table(result, args.k))
    print(format_differences(differences))
    if "item_fit_events" in bundle:
        # Targets first seen in the held-out period can only be reached through the pool's
        # fill rules, where no method can score them: show the cases without them too.
        seen = np.asarray(bundle["item_fit_events"])[evaluation.cases.target] > 0
        print(
            f"Cases whose next item occurs before the held-out period "
            f"({seen.mean():.1%} of click cases):"
        )
        print(format_table(evaluation.result(seen), args.k))
    write_json(result, args.json)
    differences_path = args.json.with_name(args.json.stem + ".differences.json")
    differences_path.write_text(json.dumps([d.as_dict() for d in differences], indent=2) + "\n")
    written = [str(args.json), str(differences_path)]
    if args.plot:
        plot_hit_ratios(result, args.k, args.plot, title=f"recsvc eval: {bundle.version}")
        written.append(str(args.plot))
    print(
        f"{result['cases']['click']} click cases, {result['cases']['cart']} "
        f"{CONVERSION_NAMES[result['conversion']]} cases, "
        f"{len(result['methods'])} methods in {time.perf_counter() - started:.1f}s; "
        f"wrote {', '.join(written)}"
    )
    return result
