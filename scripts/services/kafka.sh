#!/usr/bin/env bash
# A disposable single-node Kafka (KRaft, broker+controller) on loopback for development and
# tests, from Maven Central jars run with the machine's Java: kafka.sh install|start|stop|status
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_DIR (<repo>/.local/services/kafka),
# KAFKA_LIB (<repo>/.local/kafka-lib-<version>), KAFKA_HEAP (-Xms128m -Xmx512m),
# RECSVC_TOPICS (name:partitions ..., default "recsvc.events:3 recsvc.events.dlq:1");
# KAFKA_SASL_PORT with KAFKA_SASL_USER and KAFKA_SASL_PASSWORD: a second listener, SASL/PLAIN
# with that one user (for tests of the clients' SASL settings; off when unset).
# KAFKA_SSL_PORT with KAFKA_SSL_CERT and KAFKA_SSL_KEY (PEM files: the broker's certificate
# chain and its unencrypted PKCS#8 private key): a listener that serves TLS; with KAFKA_SSL_CA
# (a PEM file of CA certificates) too, it requires client certificates one of them signed
# (for tests of the clients' SSL settings; off when unset). KAFKA_SASL_PROTOCOL=SASL_SSL
# (default SASL_PLAINTEXT) serves the SASL listener over TLS too, with KAFKA_SSL_CERT/KEY.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
POM=$HERE/kafka-pom.xml
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
PORT=${KAFKA_PORT:-9092}
CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
DIR=$(realpath -m "${KAFKA_DIR:-$ROOT/.local/services/kafka}")
LIB=$(realpath -m "${KAFKA_LIB:-$ROOT/.local/kafka-lib-$VERSION}")
HEAP=${KAFKA_HEAP:--Xms128m -Xmx512m}
TOPICS=${RECSVC_TOPICS:-recsvc.events:3 recsvc.events.dlq:1}
BOOTSTRAP=127.0.0.1:$PORT
PIDFILE=$DIR/kafka.pid
LOG=$DIR/logs/server.log

die() { echo "kafka: $*" >&2; exit 1; }
# Serialises start/stop of one instance (parallel make jobs, test workers).
lock() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  flock -w 300 9 || die "another start/stop of $DIR has held $DIR/.lock for 300 s"
}
fail_with_log() { tail -n 30 "$1" >&2; die "$2 (log: $1)"; }
alive() { [[ $(sed -n 's/^State:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null) == [^Z]* ]]; }
exits_within() { # tenths-of-a-second pid
  local i
  for ((i = 0; i < $1; i++)); do alive "$2" || return 0; sleep 0.1; done
  ! alive "$2"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
kafka_java() { java -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$LIB/*" "$@"; }

# Pid of this instance's broker, from the pid file; a stale file is removed.
broker_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" |
    grep -qF "kafka.Kafka $DIR/server.properties"; then
    echo "$pid"
  else
    rm -f "$PIDFILE"
    return 1
  fi
}

install_jars() {
  [ -d "$LIB" ] && return
  command -v mvn >/dev/null || die "needs Maven (mvn) to fetch the jars"
  echo "kafka: resolving Kafka $VERSION jars from Maven Central into $LIB"
  mkdir -p "$(dirname "$LIB")"
  # Resolved into a temporary folder that is renamed at the end: a half download is never used.
  JARS_TMP=$(mktemp -d "$LIB.partial.XXXXXX")
  trap 'rm -rf "$JARS_TMP" "$JARS_TMP.log"' EXIT
  if ! mvn -B -q -f "$POM" org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DoutputDirectory="$JARS_TMP" -DincludeScope=runtime >"$JARS_TMP.log" 2>&1; then
    grep -m 1 -o '\[ERROR\] .*' "$JARS_TMP.log" >&2 || tail -n 20 "$JARS_TMP.log" >&2
    die "mvn could not resolve the jars of $POM"
  fi
  # Losing the race to a parallel install is fine.
  mv -T "$JARS_TMP" "$LIB" 2>/dev/null || [ -d "$LIB" ] || die "could not create $LIB"
}

# The PEM keystore lines of listener $1 (its name in lower case) from KAFKA_SSL_KEY and
# KAFKA_SSL_CERT, copied into one file: the private key, then the certificate chain.
keystore() {
  mkdir -p "$DIR/ssl"
  (umask 077 && cat "${KAFKA_SSL_KEY:?}" "${KAFKA_SSL_CERT:?}" >"$DIR/ssl/keystore.pem")
  echo "listener.name.$1.ssl.keystore.type=PEM"
  echo "listener.name.$1.ssl.keystore.location=$DIR/ssl/keystore.pem"
}

write_config() {
  mkdir -p "$DIR/data" "$DIR/logs"
  local listeners="PLAINTEXT://127.0.0.1:$PORT" advertised="PLAINTEXT://127.0.0.1:$PORT"
  local sasl="" sasl_protocol=${KAFKA_SASL_PROTOCOL:-SASL_PLAINTEXT}
  if [ -n "${KAFKA_SASL_PORT:-}" ]; then
    [[ $sasl_protocol == SASL_PLAINTEXT || $sasl_protocol == SASL_SSL ]] ||
      die "KAFKA_SASL_PROTOCOL must be SASL_PLAINTEXT or SASL_SSL, not $sasl_protocol"
    listeners+=",$sasl_protocol://127.0.0.1:$KAFKA_SASL_PORT"
    advertised+=",$sasl_protocol://127.0.0.1:$KAFKA_SASL_PORT"
    sasl="sasl.enabled.mechanisms=PLAIN
listener.name.${sasl_protocol,,}.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_${KAFKA_SASL_USER:?}=\"${KAFKA_SASL_PASSWORD:?}\";"
    [ "$sasl_protocol" = SASL_PLAINTEXT ] || sasl+=$'\n'$(keystore sasl_ssl)
  fi
  local tls=""
  if [ -n "${KAFKA_SSL_PORT:-}" ]; then
    listeners+=",SSL://127.0.0.1:$KAFKA_SSL_PORT"
    advertised+=",SSL://127.0.0.1:$KAFKA_SSL_PORT"
    tls=$(keystore ssl)
    if [ -n "${KAFKA_SSL_CA:-}" ]; then
      tls+="
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location=$(realpath "$KAFKA_SSL_CA")
listener.name.ssl.ssl.client.auth=required"
    fi
  fi
  cat >"$DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=$listeners,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=$advertised
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
$sasl
$tls
log.dirs=$DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
EOF
  cat >"$DIR/log4j2.xml" <<EOF
<Configuration status="warn" shutdownHook="disable">
  <Appenders>
    <File name="server" fileName="$LOG"><PatternLayout pattern="[%d] %p %m (%c)%n"/></File>
  </Appenders>
  <Loggers>
    <Root level="info"><AppenderRef ref="server"/></Root>
  </Loggers>
</Configuration>
EOF
}

# Format the log dir once, with a cluster id generated once (16 random bytes, base64url).
# The id is given as --cluster-id=ID: one that starts with '-' (1 in 64) would otherwise be
# read as an option, and the format would fail.
format_storage() {
  [ -s "$DIR/cluster.id" ] ||
    head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$DIR/cluster.id"
  kafka_java kafka.tools.StorageTool format --cluster-id="$(cat "$DIR/cluster.id")" \
    -c "$DIR/server.properties" --ignore-formatted >"$DIR/logs/format.log" 2>&1 ||
    fail_with_log "$DIR/logs/format.log" "formatting the storage failed"
}

wait_ready() {
  local pid=$1 i
  for ((i = 0; i < 900; i++)); do
    alive "$pid" || broker_failed "the broker exited during start-up"
    grep -q "Kafka Server started" "$LOG" 2>/dev/null && port_open "$PORT" && return
    sleep 0.1
  done
  broker_failed "not ready after 90 s"
}

# The ERROR lines (each with the next, usually the exception) say more than the shutdown noise
# at the end of the log; JVM failures (bad options, wrong Java) are in stdout.log.
broker_failed() {
  {
    grep -A1 -E '^\[[^]]*\] (ERROR|FATAL) ' "$LOG" | grep -v '^--$' | head -n 20
    tail -n 5 "$LOG"
    tail -n 20 "$DIR/logs/stdout.log"
  } >&2 2>/dev/null || true
  die "$1 (logs: $DIR/logs)"
}

create_topics() {
  local spec log=$DIR/logs/topics.log
  : >"$log"
  for spec in $TOPICS; do
    kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --create \
      --if-not-exists --topic "${spec%%:*}" --partitions "${spec##*:}" --replication-factor 1 \
      >>"$log" 2>&1 || fail_with_log "$log" "could not create topic ${spec%%:*}"
  done
}

start() {
  local pid
  if pid=$(broker_pid); then
    wait_ready "$pid"
    echo "kafka: $BOOTSTRAP (already running)"
    return
  fi
  command -v java >/dev/null || die "needs Java 17 or newer (java)"
  install_jars
  write_config
  format_storage
  [ ! -e "$LOG" ] || mv "$LOG" "$LOG.prev" # readiness is read from a fresh log
  # Own session: a Ctrl-C or hang-up aimed at the calling make does not reach the broker;
  # 9>&-: the broker must not inherit (and so hold) the start/stop lock.
  # shellcheck disable=SC2086 # KAFKA_HEAP holds several options
  setsid nohup java $HEAP -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$DIR/log4j2.xml" -cp "$LIB/*" \
    kafka.Kafka "$DIR/server.properties" </dev/null >"$DIR/logs/stdout.log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PIDFILE"
  wait_ready "$pid"
  create_topics
  echo "kafka: $BOOTSTRAP (started)"
}

stop() {
  local pid
  if ! pid=$(broker_pid); then echo "kafka: not running ($DIR)"; return; fi
  kill -TERM "$pid" 2>/dev/null || true
  if ! exits_within 300 "$pid"; then
    echo "kafka: pid $pid still running 30 s after SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    exits_within 50 "$pid" || die "pid $pid survived SIGKILL"
  fi
  rm -f "$PIDFILE"
  echo "kafka: stopped $BOOTSTRAP"
}

status() {
  local pid
  if pid=$(broker_pid) && port_open "$PORT"; then
    echo "kafka: $BOOTSTRAP (running, pid $pid)"
  elif [ -n "${pid:-}" ]; then
    echo "kafka: starting (pid $pid, not yet listening on $BOOTSTRAP)"
  else
    echo "kafka: not running ($DIR)"
    return 3
  fi
}

case "${1:-}" in
  install) install_jars && echo "kafka: Kafka $VERSION jars in $LIB" ;;
  start) lock && start ;;
  stop) lock && stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
