"""A message too big or too broken to dead-letter whole never stops ingest (real Kafka)."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from conftest import KAFKA, Topics, read_topic, wait_for
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from test_stream_to_recommend import online_args, session_ids

from recsvc.dead_letters import VALUE_PREFIX_BYTES
from recsvc.events import Event

POISON = bytes(range(128, 256)) * 2400  # 300 KB, not one byte of it UTF-8


def send_poison_between_good_events(producer: KafkaProducer, topic: str, user: str) -> None:
    """A good event, the poison, then two good events, all in one partition."""
    run = uuid.uuid4().hex
    values = [Event(f"{run}-{n}", user, "b", "click", 1000.0 + n).to_json() for n in range(3)]
    for value in (values[0], POISON, *values[1:]):
        producer.send(topic, key=b"one-partition", value=value)
    producer.flush()


def committed(topics: Topics) -> int | None:
    """The group's committed offset of the events topic's one partition."""
    reader = KafkaConsumer(bootstrap_servers=KAFKA, group_id=topics.group)
    try:
        return reader.committed(TopicPartition(topics.events, 0))
    finally:
        reader.close()


def test_a_300_kb_non_utf8_message_is_dead_lettered_small_and_the_rest_applied(
    tiny_bundle: Path, redis_url: str, topics: Topics, producer: KafkaProducer, processes, tmp_path
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    ingest = processes(["ingest", *online_args(tiny_bundle, redis_url, topics)], tmp_path / "log")
    send_poison_between_good_events(producer, topics.events, user)

    wait_for(lambda: len(session_ids(redis_url, user)) == 3, what="the events behind the poison")
    (raw,) = read_topic(topics.dlq, expected=1)
    letter = json.loads(raw)
    assert len(raw) < 200_000
    assert (letter["reason"], letter["size"], letter["truncated"]) == (
        "not_utf8",
        len(POISON),
        True,
    )
    assert (letter["topic"], letter["offset"]) == (topics.events, 1)
    assert base64.b64decode(letter["value"]) == POISON[:VALUE_PREFIX_BYTES]
    assert "MessageSizeTooLarge" not in ingest.output()


def test_a_letter_the_dead_letter_topic_refuses_is_skipped_counted_and_logged(
    tiny_bundle: Path,
    redis_url: str,
    admin: KafkaAdminClient,
    producer: KafkaProducer,
    processes,
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:10]
    topics = Topics(f"test.{run}.events", f"test.{run}.dlq", f"test-{run}")
    # A dead-letter topic that takes no record over 1 KB: every letter of the poison is too big.
    admin.create_topics(
        [
            NewTopic(topics.events, 1, 1),
            NewTopic(topics.dlq, 1, 1, topic_configs={"max.message.bytes": "1024"}),
        ],
        timeout_ms=20_000,
    )
    try:
        user = f"user-{run}"
        ingest = processes(
            ["ingest", *online_args(tiny_bundle, redis_url, topics)], tmp_path / "ingest.log"
        )
        send_poison_between_good_events(producer, topics.events, user)
        wait_for(lambda: len(session_ids(redis_url, user)) == 3, what="the events behind it")
        wait_for(
            lambda: "skipped a message the dead-letter topic refuses" in ingest.output(),
            what="the skip in the log",
        )
        # The partition moved on: all four offsets are committed.
        wait_for(lambda: committed(topics) == 4, what="the committed offset")
        # The refusal did not break the dead-letter producer: a small letter still goes.
        producer.send(topics.events, key=user.encode(), value=b"not json").get(timeout=10)
        letters = read_topic(topics.dlq, expected=1, timeout_s=30)
        assert [json.loads(x)["offset"] for x in letters] == [4]
    finally:
        admin.delete_topics([topics.events, topics.dlq], timeout_ms=20_000)
