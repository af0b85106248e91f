"""``recsvc eval``: load a bundle, evaluate every method, print and write the results."""

from __future__ import annotations

import argparse
import dataclasses
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
from recsvc.live import LiveSettings


def live_settings(overrides: list[str]) -> LiveSettings:
    """Live settings with ``live.FIELD=VALUE`` overrides (:class:`LiveSettings` fields)."""
    fields = {f.name: f.type for f in dataclasses.fields(LiveSettings)}
    values: dict[str, float | int] = {}
    for text in overrides:
        key, _, value = text.partition("=")
        name = key.strip().removeprefix("live.")
        if name not in fields:
            raise ConfigError(f"--param live.FIELD=VALUE takes {', '.join(fields)}, got {text!r}")
        try:
            values[name] = float(value) if name == "half_life_s" else int(value)
        except ValueError:
            raise ConfigError(f"--param {key}: {value!r} is not a number") from None
    return LiveSettings(**values)  # type: ignore[arg-type]


def run_eval(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    bundle = load_bundle(args.bundle)
    served = [p for p in args.param if p.startswith("candidates.")]
    live_params = [p for p in args.param if p.startswith("live.")]
    knn = knn_params([p for p in args.param if not p.startswith(("candidates.", "live."))])
    if live_params and not args.replay:
        raise ConfigError("--param live.* sets up --replay, which is not given")
    live = live_settings(live_params)
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
    if args.replay:
        if "eval/ts" not in bundle:
            raise ConfigError(
                "--replay needs the held-out events' times (eval/ts), which this bundle does "
                "not have: rebuild it with this version of recsvc pipeline"
            )
        if args.methods and "served" not in args.methods:
            raise ConfigError("--replay compares with served, which --methods leaves out")
    evaluation = evaluate(
        bundle,
        ks=args.k,
        methods=args.methods,
        knn=knn,
        candidates=candidates,
        replay=live if args.replay else None,
    )
    result = evaluation.result()
    if evaluation.replay is not None:
        result["replay"] = evaluation.replay.summary()
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
        if seen.any():
            print(
                f"Cases whose next item occurs before the held-out period "
                f"({seen.mean():.1%} of click cases):"
            )
            print(format_table(evaluation.result(seen), args.k))
        if evaluation.replay is not None and not seen.all():
            print(f"Cases whose next item is new in the held-out period ({1 - seen.mean():.1%}):")
            print(format_table(evaluation.result(~seen), args.k))
    if evaluation.replay is not None:
        summary = evaluation.replay.summary()
        print("Replay: " + ", ".join(f"{key} {value}" for key, value in summary.items()))
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
