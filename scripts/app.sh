#!/usr/bin/env bash
# Run `recsvc ingest`, `recsvc serve` and `recsvc gateway` in the background for `make run`:
#   app.sh start|stop|status
# Logs and pid files go to .local/run/. Settings come from RECSVC_* variables (see
# `recsvc serve --help`); ingest gets its own metrics port, RECSVC_INGEST_METRICS_PORT (9465).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=$ROOT/.local/run
RECSVC=$ROOT/.venv/bin/recsvc
PY=$ROOT/.venv/bin/python
INGEST_METRICS_PORT=${RECSVC_INGEST_METRICS_PORT:-9465}
unset RECSVC_INGEST_METRICS_PORT

pid_of() {
  local pid
  pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
  if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "recsvc $1"; then
    echo "$pid"
  else
    rm -f "$RUN/$1.pid"
    return 1
  fi
}

start_one() {
  local name=$1
  shift
  if pid=$(pid_of "$name"); then
    echo "$name: already running (pid $pid)"
    return
  fi
  mkdir -p "$RUN"
  setsid nohup "$RECSVC" "$name" "$@" </dev/null >>"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  echo "$name: started (pid $!, log $RUN/$name.log)"
}

stop_one() {
  local name=$1 pid
  if ! pid=$(pid_of "$name"); then
    echo "$name: not running"
    return
  fi
  kill -TERM "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$RUN/$name.pid"
  echo "$name: stopped"
}

case ${1:-} in
  start)
    # Static group membership: a restarted ingest gets its partitions back at once. The id
    # is stable across restarts and unique to this checkout on this host; setting
    # RECSVC_GROUP_INSTANCE_ID (empty: off) overrides it.
    static_member=()
    if [[ ! -v RECSVC_GROUP_INSTANCE_ID ]]; then
      checkout=$(cksum <<<"$ROOT" | cut -d ' ' -f 1)
      static_member=(--group-instance-id "recsvc-ingest-$(uname -n)-$checkout")
    fi
    start_one ingest --metrics-port "$INGEST_METRICS_PORT" "${static_member[@]}"
    start_one serve
    gateway_target=()
    if [[ ! -v RECSVC_GATEWAY_GRPC_TARGET ]]; then
      gateway_target=(--gateway-grpc-target "127.0.0.1:${RECSVC_PORT:-50051}")
    fi
    start_one gateway "${gateway_target[@]}"
    # Up to two minutes for SERVING (loading a large bundle takes a while); give up at once
    # if any process exits.
    for _ in $(seq 60); do
      for name in serve ingest gateway; do
        if ! pid_of "$name" >/dev/null; then
          tail -n 20 "$RUN/$name.log" >&2
          echo "$name: exited during start-up; see $RUN/$name.log" >&2
          exit 1
        fi
      done
      "$PY" -m recsvc.client --target "127.0.0.1:${RECSVC_PORT:-50051}" wait --timeout 2 \
        2>/dev/null && exit 0
    done
    echo "serve: not SERVING after 2 minutes; see $RUN/serve.log" >&2
    exit 1
    ;;
  stop)
    stop_one gateway
    stop_one serve
    stop_one ingest
    ;;
  status)
    for name in ingest serve gateway; do
      if pid=$(pid_of "$name"); then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
    done
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
