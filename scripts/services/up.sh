#!/usr/bin/env bash
# Start the local Redis and Kafka (idempotent); prints one line per service with its address.
set -euo pipefail
[ $# -eq 0 ] || { echo "usage: $0 (no arguments; settings: see redis.sh, kafka.sh)" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$HERE/redis.sh" start
bash "$HERE/kafka.sh" start
