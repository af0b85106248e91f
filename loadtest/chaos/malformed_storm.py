"""``malformed-storm``: 30 kinds of malformed messages among good events, through ingest.

Each kind (``KINDS``) breaks the Event contract its own way, or is an exact replay of a good
event (``duplicate_event``). ``--storm-rounds`` rounds of one message of each kind, in a
random order per round, are spread evenly among ``--events`` good events of ``--users``
shoppers (at most one per 10 events, so that sessions have co-visits) on a 3-partition
topic of the run's own; each malformed message follows a good event with its key, so that
it lands in a partition with good events before and after it. One real ``recsvc ingest``
(live co-visits on) consumes them into an empty Redis database (``--redis-url``) with a
dead-letter topic that, like a DLQ configured smaller than its events topic, takes no record
over ``--storm-dlq-max-bytes``: the letters of the oversized kinds (64 KB of their value) are
refused, so those are the poison that must be skipped, counted and logged, with the events
after them applied. The oversized text (1.5 MB) is also over Kafka's default 1 MB record
limit and the consumer's per-partition fetch size (the events topic allows 4 MB).

Figures: per kind, ``sent`` versus ``dead_lettered`` (a letter at that message's offset, with
``reason``) or ``skipped`` (ingest's log line for that offset) or counted as ``duplicate``;
ingest's own counters scraped from its ``--metrics-port`` (``metrics``, ``dlq_by_reason``),
which must agree; the good events against Redis (``lost``, ``extra``, ``double_counted``,
as ``ingest-kill``), and ``after_poison_events``/``after_poison_lost``: the good events
behind a skipped message in its partition, and how many of them Redis lacks. Ingest must
neither exit (``ingest_exited``) nor retry (``kafka_retries``), and stops cleanly.

    python -m loadtest.chaos --scenario malformed-storm --events 200000 --storm-rounds 20
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from loadtest.chaos.common import (
    SESSION_LENGTH,
    Ingest,
    counting_failures,
    empty_database,
    metric_samples,
    new_run,
    remove_from_kafka,
    stored,
    verify,
    wait,
)
from loadtest.ingest_bench import committed, end_offsets, free_port
from loadtest.processes import stop_process
from recsvc.contract import LATEST_TIMESTAMP, MAX_ID_LENGTH
from recsvc.events import Event

#: Outcomes of a kind that is no dead letter.
SKIPPED, DUPLICATE = "skipped", "duplicate"
#: The largest record the events topic takes: room for the oversized text.
EVENTS_TOPIC_MAX_BYTES = 4 << 20
SKIP_LOG = "skipped a message the dead-letter topic refuses"

Fields = dict[str, Any]


def _json(fields: Fields, **changes: Any) -> bytes:
    return json.dumps({**fields, **changes}, separators=(",", ":")).encode()


def _without(fields: Fields, name: str) -> bytes:
    return _json({k: v for k, v in fields.items() if k != name})


def _raw_ts(fields: Fields, literal: str) -> bytes:
    """The event with ``literal`` as the JSON text of its ts (what json.dumps cannot write)."""
    return _json(fields, ts=0).replace(b'"ts":0', b'"ts":' + literal.encode())


#: kind -> (its value, made from a good event's fields; ingest's outcome: the reason of its
#: dead letter, SKIPPED or DUPLICATE). A None value is a tombstone.
KINDS: dict[str, tuple[Callable[[Fields], bytes | None], str]] = {
    "oversized_text": (lambda f: b"x" * 1_500_000, SKIPPED),
    "oversized_not_utf8": (lambda f: bytes(range(128, 256)) * 2400, SKIPPED),
    "large_not_json": (lambda f: b"y" * 20_000, "not_json"),
    "not_utf8": (lambda f: _json(f).replace(b'"click"', b'"cl\xffck"'), "not_utf8"),
    "utf8_bom": (lambda f: b"\xef\xbb\xbf" + _json(f), "not_json"),
    "not_json": (lambda f: b"{not json", "not_json"),
    "truncated_json": (lambda f: _json(f)[:-7], "not_json"),
    "empty_value": (lambda f: b"", "not_json"),
    "tombstone": (lambda f: None, "not_json"),
    "deeply_nested": (lambda f: b"[" * 10_000 + b"]" * 10_000, "not_json"),
    "ts_of_5000_digits": (lambda f: _raw_ts(f, "9" * 5000), "not_json"),
    "json_array": (lambda f: json.dumps(list(f.values())).encode(), "not_an_object"),
    "json_null": (lambda f: b"null", "not_an_object"),
    "json_string": (lambda f: b'"click"', "not_an_object"),
    "missing_ts": (lambda f: _without(f, "ts"), "missing_field"),
    "ts_as_string": (lambda f: _json(f, ts=str(f["ts"])), "wrong_type"),
    "ts_as_bool": (lambda f: _json(f, ts=True), "wrong_type"),
    "user_id_null": (lambda f: _json(f, user_id=None), "wrong_type"),
    "ts_nan": (lambda f: _raw_ts(f, "NaN"), "bad_ts"),
    "ts_infinite": (lambda f: _raw_ts(f, "1e999"), "bad_ts"),
    "ts_overflowing_int": (lambda f: _raw_ts(f, "1" + "0" * 400), "bad_ts"),
    "ts_negative": (lambda f: _json(f, ts=-1.0), "bad_ts"),
    "ts_far_future": (lambda f: _json(f, ts=LATEST_TIMESTAMP + 86_400.0), "bad_ts"),
    "ts_milliseconds": (lambda f: _json(f, ts=f["ts"] * 1000), "bad_ts"),
    "empty_event_id": (lambda f: _json(f, event_id=""), "bad_id"),
    "id_too_long": (lambda f: _json(f, user_id="u" * (MAX_ID_LENGTH + 1)), "bad_id"),
    "control_chars_in_id": (lambda f: _json(f, item_id="a\x00\n\x1b"), "bad_id"),
    "lone_surrogate_in_id": (lambda f: _json(f, item_id="\ud800"), "bad_id"),
    "unknown_type": (lambda f: _json(f, type="view"), "unknown_type"),
}
DUPLICATE_KIND = "duplicate_event"  # the good event it follows, sent again as is


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storm-rounds",
        type=int,
        default=20,
        help="rounds of one malformed message of each kind, spread among the --events good ones",
    )
    parser.add_argument(
        "--storm-dlq-max-bytes",
        type=int,
        default=48 << 10,
        help="max.message.bytes of the dead-letter topic: the letters of the oversized kinds "
        "(64 KB of their value) must be over it, those of the other kinds (at most ~22 KB) "
        "under it",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    if args.storm_rounds < 1 or not 24 << 10 <= args.storm_dlq_max_bytes < 64 << 10:
        return "--storm-rounds must be >= 1 and --storm-dlq-max-bytes in 24 KiB..64 KiB"
    return None


def storm(
    good: list[Event], rounds: int, seed: int
) -> list[tuple[str | None, bytes, bytes | None]]:
    """(kind or None for a good event, key, value) of every message, in the order sent."""
    rng = random.Random(seed)
    kinds = [*KINDS, DUPLICATE_KIND]
    bad: list[str] = []
    for _ in range(rounds):
        bad += rng.sample(kinds, len(kinds))
    # The j-th malformed message comes right after good event number after[j].
    after = [(j + 1) * len(good) // (len(bad) + 1) for j in range(len(bad))]
    messages: list[tuple[str | None, bytes, bytes | None]] = []
    j = 0
    for n, event in enumerate(good):
        key = event.user_id.encode()
        messages.append((None, key, event.to_json()))
        while j < len(bad) and after[j] == n:
            kind = bad[j]
            if kind == DUPLICATE_KIND:
                messages.append((kind, key, event.to_json()))
            else:
                fields = {
                    "event_id": f"{event.event_id}-bad{j}",
                    "user_id": event.user_id,
                    "item_id": event.item_id,
                    "type": "click",
                    "ts": event.ts,
                }
                messages.append((kind, key, KINDS[kind][0](fields)))
            j += 1
    return messages


def send_all(
    kafka: str, topic: str, messages: list[tuple[str | None, bytes, bytes | None]]
) -> list[tuple[int, int]]:
    """Send the messages; the (partition, offset) each got."""
    producer = KafkaProducer(
        bootstrap_servers=kafka,
        acks="all",
        linger_ms=20,
        batch_size=256 << 10,
        max_request_size=EVENTS_TOPIC_MAX_BYTES,
    )
    try:
        futures = [producer.send(topic, key=key, value=value) for _, key, value in messages]
        producer.flush(timeout=120)
        return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close(timeout=10)


def dead_letters(kafka: str, topic: str, timeout_s: float) -> dict[tuple[int, int], str]:
    """Every letter of the dead-letter topic: (partition, offset) of the message -> reason."""
    expected = sum(end_offsets(kafka, topic).values())
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka, auto_offset_reset="earliest", consumer_timeout_ms=1000
    )
    letters: dict[tuple[int, int], str] = {}
    read = 0
    deadline = time.monotonic() + timeout_s
    try:
        while read < expected and time.monotonic() < deadline:
            for record in consumer:
                letter = json.loads(record.value)
                letters[letter["partition"], letter["offset"]] = letter["reason"]
                read += 1
    finally:
        consumer.close()
    if read < expected:
        raise SystemExit(f"chaos: read {read} of the {expected} dead letters in {timeout_s} s")
    return letters


def skips_logged(log: Path) -> set[tuple[int, int]]:
    """(partition, offset) of each message ingest logged as skipped."""
    found = set()
    for line in log.read_text(errors="replace").splitlines():
        if SKIP_LOG in line and line.startswith("{"):
            entry = json.loads(line)
            found.add((entry["partition"], entry["offset"]))
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = empty_database(args.redis_url)
    # At most one shopper per 10 events, so that sessions have co-visits.
    tag, topic, group, users, good = new_run(args, min(args.users, max(1, args.events // 10)))
    dlq = f"{topic}.dlq"
    messages = storm(good, args.storm_rounds, args.seed)
    admin = KafkaAdminClient(bootstrap_servers=args.kafka, request_timeout_ms=20_000)
    admin.create_topics(
        [
            NewTopic(topic, 3, 1, topic_configs={"max.message.bytes": str(EVENTS_TOPIC_MAX_BYTES)}),
            NewTopic(dlq, 1, 1, topic_configs={"max.message.bytes": str(args.storm_dlq_max_bytes)}),
        ]
    )
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ingest = Ingest(args, topic, group, workdir / f"{tag}-ingest.log", args.redis_url)
    metrics_port = free_port()
    proc: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        placed = send_all(args.kafka, topic, messages)
        total = sum(end_offsets(args.kafka, topic).values())
        proc = ingest.start("--metrics-port", str(metrics_port))
        running = proc

        def finished() -> bool:
            return running.poll() is not None or committed(admin, group) >= total

        wait(finished, args.timeout_s, "ingest through the whole topic")
        exited = proc.poll()
        metrics = metric_samples(metrics_port, "recsvc_ingest_events_total")
        by_reason = metric_samples(metrics_port, "recsvc_dlq_events_total")
        retries = metric_samples(metrics_port, "recsvc_ingest_retries_total")
        stop_process(proc, 20)
        exit_code, proc = proc.returncode, None
        letters = dead_letters(args.kafka, dlq, args.timeout_s)
        skipped = skips_logged(ingest.log)
        kinds = per_kind(messages, placed, letters, skipped, metrics)
        after, after_lost = behind_the_poison(client, messages, placed, skipped)
        return {
            "scenario": "malformed-storm",
            "events": len(good),
            "users": len(users),
            "rounds": args.storm_rounds,
            "malformed": len(messages) - len(good),
            "kind_count": len(kinds),
            "kinds": kinds,
            "metrics": {k: int(v) for k, v in sorted(metrics.items())},
            "dlq_by_reason": {k: int(v) for k, v in sorted(by_reason.items())},
            "letters": len(letters),
            "skips_logged": len(skipped),
            **verify(client, users, good),
            "after_poison_events": after,
            "after_poison_lost": after_lost,
            "kafka_retries": int(retries.get("kafka", 0)),
            "ingest_exited": exited,
            "ingest_exit_code": exit_code,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        if proc is not None:
            stop_process(proc, 20)
        client.flushdb()
        client.close()
        remove_from_kafka(admin, [topic, dlq], group)


def per_kind(
    messages: list[tuple[str | None, bytes, bytes | None]],
    placed: list[tuple[int, int]],
    letters: dict[tuple[int, int], str],
    skipped: set[tuple[int, int]],
    metrics: dict[str, float],
) -> dict[str, dict[str, Any]]:
    """Per kind: sent, and dead-lettered (with the reasons seen), skipped or duplicate."""
    found: dict[str, dict[str, Any]] = {}
    reasons: dict[str, Counter[str]] = {}
    for (kind, _, _), at in zip(messages, placed, strict=True):
        if kind is None:
            continue
        figures = found.setdefault(kind, {"sent": 0, "dead_lettered": 0, "skipped": 0})
        figures["sent"] += 1
        if at in letters:
            figures["dead_lettered"] += 1
            reasons.setdefault(kind, Counter())[letters[at]] += 1
        if at in skipped:
            figures["skipped"] += 1
    for kind, figures in found.items():
        if kind in reasons:
            figures["reason"] = "+".join(sorted(reasons[kind]))
        if kind == DUPLICATE_KIND:
            figures["duplicate"] = int(metrics.get("duplicate", 0))  # only these are replays
    return dict(sorted(found.items()))


def behind_the_poison(
    client: redis.Redis,
    messages: list[tuple[str | None, bytes, bytes | None]],
    placed: list[tuple[int, int]],
    skipped: set[tuple[int, int]],
) -> tuple[int, int]:
    """The good events after the first skipped message of their partition that a session
    keeps (its last ``SESSION_LENGTH``), and how many of them Redis lacks."""
    first_skip: dict[int, int] = {}
    for partition, offset in skipped:
        first_skip[partition] = min(offset, first_skip.get(partition, offset))
    by_user: dict[str, list[str]] = {}
    behind: dict[str, set[str]] = {}
    for (kind, _, value), (partition, offset) in zip(messages, placed, strict=True):
        if kind is None and value is not None:
            event = json.loads(value)
            by_user.setdefault(event["user_id"], []).append(event["event_id"])
            if offset > first_skip.get(partition, offset):
                behind.setdefault(event["user_id"], set()).add(event["event_id"])
    for user, ids in behind.items():  # the events in time order: the ones a session keeps
        ids &= set(by_user[user][-SESSION_LENGTH:])
    sessions = stored(client, list(behind))
    count = sum(len(ids) for ids in behind.values())
    return count, sum(len(ids - sessions.get(user, set())) for user, ids in behind.items())


def failures(figures: dict[str, Any]) -> list[str]:
    found = counting_failures(figures)
    expected = {
        **{kind: outcome for kind, (_, outcome) in KINDS.items()},
        DUPLICATE_KIND: DUPLICATE,
    }
    for kind, outcome in expected.items():
        got = figures["kinds"].get(kind, {})
        sent = got.get("sent", 0)
        want = {"dead_lettered": 0, "skipped": 0}
        if outcome == SKIPPED:
            want["skipped"] = sent
        elif outcome != DUPLICATE:
            want["dead_lettered"] = sent
        if (
            not sent
            or any(got.get(k) != v for k, v in want.items())
            or (outcome not in (SKIPPED, DUPLICATE) and got.get("reason") != outcome)
            or (outcome == DUPLICATE and got.get("duplicate") != sent)
        ):
            found.append(f"kind {kind}: expected every one {outcome}, got {got}")
    metrics, kinds = figures["metrics"], figures["kinds"].values()
    counted = {
        "applied": figures["events"],
        "dead_lettered": sum(k["dead_lettered"] for k in kinds),
        "skipped": sum(k["skipped"] for k in kinds),
    }
    for result, count in counted.items():
        if metrics.get(result, 0) != count:
            found.append(f"metrics {result}: {metrics.get(result, 0)}, expected {count}")
    if sum(figures["dlq_by_reason"].values()) != figures["letters"]:
        found.append("dlq_by_reason (the counters and the dead-letter topic disagree)")
    if not figures["after_poison_events"] or figures["after_poison_lost"]:
        found.append("after_poison_lost (or no good event behind a skipped message)")
    if figures["kafka_retries"]:
        found.append("kafka_retries (a malformed message made a Kafka call fail)")
    if figures["ingest_exited"] is not None or figures["ingest_exit_code"] != 0:
        found.append("ingest_exited/ingest_exit_code (ingest crashed or did not stop cleanly)")
    return found
