#!/usr/bin/env bash
# Stop the local Kafka and Redis (idempotent); tries both even if one fails.
set -euo pipefail
[ $# -eq 0 ] || { echo "usage: $0 (no arguments; settings: see redis.sh, kafka.sh)" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rc=0
bash "$HERE/kafka.sh" stop || rc=1
bash "$HERE/redis.sh" stop || rc=1
exit "$rc"
