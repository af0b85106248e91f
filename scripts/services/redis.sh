#!/usr/bin/env bash
# A disposable Redis on loopback for development and tests: redis.sh start|stop|status
# Env: REDIS_PORT (6379), REDIS_DIR (<repo>/.local/services/redis). Instances with their own
# port and dir run side by side. Data persists in $DIR/appendonlydir (AOF, fsync every
# second): stop then start keeps every session; a crash can lose the last second of writes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PORT=${REDIS_PORT:-6379}
DIR=$(realpath -m "${REDIS_DIR:-$ROOT/.local/services/redis}")
URL=redis://127.0.0.1:$PORT/0

die() { echo "redis: $*" >&2; exit 1; }
# Serialises start/stop of one instance (parallel make jobs, test workers).
lock() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -w 60 9 || die "another start/stop of $DIR has held $DIR/.lock for 60 s"
}
cli() { timeout 2 redis-cli -h 127.0.0.1 -p "$PORT" "$@" 2>/dev/null; }
answers() { command -v redis-cli >/dev/null && [ "$(cli ping)" = PONG ]; }
# True while the process exists and is not a zombie (PID 1 may not reap orphans).
alive() { [[ $(sed -n 's/^State:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null) == [^Z]* ]]; }

ensure_installed() {
  command -v redis-server >/dev/null && return
  echo "redis: installing redis-server with apt-get"
  local sudo=() log
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  log=$(mktemp)
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends)
  # A fresh machine may have no package lists yet: update only when the first attempt fails.
  if ! { "${apt[@]}" install redis-server ||
    { "${apt[@]}" update && "${apt[@]}" install redis-server; }; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "apt-get install redis-server failed"
  fi
  rm -f "$log"
}

start() {
  ensure_installed
  if answers; then echo "redis: $URL (already running)"; return; fi
  mkdir -p "$DIR"
  cat >"$DIR/redis.conf" <<EOF
bind 127.0.0.1
port $PORT
protected-mode yes
dir "$DIR"
pidfile "$DIR/redis.pid"
logfile "$DIR/redis.log"
save ""
appendonly yes
appendfsync everysec
EOF
  # Detached in its own session, but as our child rather than with `daemonize yes`, so
  # an early exit (port taken, bad config) is noticed at once instead of after the timeout.
  # 9>&-: the server must not inherit (and so hold) the start/stop lock.
  setsid redis-server "$DIR/redis.conf" --daemonize no </dev/null >>"$DIR/redis.log" 2>&1 9>&- &
  local pid=$! i
  for ((i = 0; i < 300; i++)); do
    if answers; then echo "redis: $URL (started)"; return; fi
    alive "$pid" || break
    sleep 0.1
  done
  tail -n 20 "$DIR/redis.log" >&2
  die "did not answer PING on 127.0.0.1:$PORT (log: $DIR/redis.log)"
}

# An instance started by an older redis.sh runs without AOF, and Redis 7 with AOF on starts
# from the AOF alone (it ignores a dump.rdb): turn AOF on and wait until Redis has written
# the data into it (SHUTDOWN refuses meanwhile), so the next start finds every session.
enable_aof() {
  [ "$(cli config get appendonly | sed -n 2p)" = no ] || return 0
  echo "redis: turning on AOF before stopping 127.0.0.1:$PORT (started without it)"
  cli config set appendonly yes >/dev/null || die "CONFIG SET appendonly yes failed"
  local i info
  for ((i = 0; i < 600; i++)); do
    info=$(cli info persistence | tr -d '\r') || true
    [ -n "$info" ] || return 0 # no answer: stop() below notices a gone server
    [[ $info == *aof_rewrite_in_progress:0* && $info == *aof_rewrite_scheduled:0* ]] && return
    sleep 0.1
  done
  die "the first AOF of $DIR is still being written after 60 s (log: $DIR/redis.log)"
}

stop() {
  if ! answers; then echo "redis: not running on 127.0.0.1:$PORT"; return; fi
  local pid i
  pid=$(cli info server | tr -d '\r' | sed -n 's/^process_id://p')
  enable_aof
  # With AOF on (and no save points), SHUTDOWN writes and fsyncs the AOF, then exits.
  cli shutdown >/dev/null || true
  for ((i = 0; i < 300; i++)); do
    if { [ -n "$pid" ] && ! alive "$pid"; } || { [ -z "$pid" ] && ! answers; }; then
      echo "redis: stopped 127.0.0.1:$PORT"
      return
    fi
    sleep 0.1
  done
  die "pid $pid did not exit after SHUTDOWN"
}

status() {
  if answers; then echo "redis: $URL (running)"; return; fi
  echo "redis: not running on 127.0.0.1:$PORT"
  return 3
}

case "${1:-}" in
  start) lock && start ;;
  stop) lock && stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
