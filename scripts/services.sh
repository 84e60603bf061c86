#!/usr/bin/env bash
# PostgreSQL 15 and Redis on 127.0.0.1, for Terrarium's service tests and storage benchmark.
#
#   eval "$(scripts/services.sh start)"   start both (idempotent), export their URLs
#   scripts/services.sh stop              stop both
#   scripts/services.sh status            say what runs; exit 0 only when both answer
#   scripts/services.sh env               print the export lines only
#   scripts/services.sh start-pg | stop-pg | start-redis | stop-redis    one service
#   scripts/services.sh kill-pg | kill-redis        SIGKILL the server (fault tests)
#   scripts/services.sh restart-pg | restart-redis  start it again (after kill-*: crash recovery)
#   scripts/services.sh pause-redis | resume-redis  SIGSTOP / SIGCONT Redis: it hangs, data kept
#   scripts/services.sh freeze-pg | thaw-pg          SIGSTOP / SIGCONT our postgres and its backends
#   scripts/services.sh readonly-pg | readwrite-pg   default_transaction_read_only on / off (a failover)
#   scripts/services.sh rotate-pg-password | restore-pg-password
#                         change the writer role's password and end its sessions / set it back
#
# `start`, `env` and `restart-*` print only `export NAME=value` lines on stdout (progress goes to
# stderr): DATABASE_URL, REDIS_URL, TERRARIUM_TEST_PG_URL, TERRARIUM_TEST_REDIS_URL, and
# TERRARIUM_TEST_PG_WRITER_URL: the role `terrarium_writer`, the one role that logs in with a
# password (scram-sha-256), so that a credential rotation can be a fault under test.
#
# Settings (environment):
#   TERRARIUM_SERVICES_DIR  where clusters, logs and pid files live  (default ${TMPDIR:-/tmp}/terrarium-services)
#   TERRARIUM_PG_PORT       PostgreSQL port                          (default 55433)
#   TERRARIUM_REDIS_PORT    Redis port                               (default 56380)
#   TERRARIUM_PG_DB         database created on first start          (default terrarium)
#   TERRARIUM_PG_BIN        PostgreSQL binaries   (default: the newest /usr/lib/postgresql/*/bin)
#   TERRARIUM_TLS_CERT, TERRARIUM_TLS_KEY, TERRARIUM_TLS_CA   PEM files: when all three are set,
#                           PostgreSQL offers TLS with this certificate (ssl = on; plain still
#                           accepted) and Redis speaks only TLS (REDIS_URL is rediss://). For
#                           tests (persistence `testing::OwnServers::with_tls`).
#
# PostgreSQL (Debian's `postgresql` package, whatever its major version) and Redis are installed
# with apt-get when missing (needs root). As root, PostgreSQL runs as the `postgres` user, or a
# system user `terrarium-pg` created on first use. Both servers listen on 127.0.0.1 only with
# trust authentication (but for `terrarium_writer`): this is for tests on one machine, never
# for production. A process is
# only ever signalled through the pid file this script wrote, after checking it is our server.
set -euo pipefail

BASE="${TERRARIUM_SERVICES_DIR:-${TMPDIR:-/tmp}/terrarium-services}"
PG_PORT="${TERRARIUM_PG_PORT:-55433}"
REDIS_PORT="${TERRARIUM_REDIS_PORT:-56380}"
PG_DB="${TERRARIUM_PG_DB:-terrarium}"
PG_BIN="${TERRARIUM_PG_BIN:-}"
PG_SUPERUSER=postgres
WRITER=terrarium_writer
WRITER_PASSWORD=terrarium-writer
WRITER_HBA="host all $WRITER 127.0.0.1/32 scram-sha-256"
HOST=127.0.0.1
PGDATA="$BASE/pg"
PG_LOG="$BASE/pg.log"
REDIS_DIR="$BASE/redis"
REDIS_PIDFILE="$REDIS_DIR/redis.pid"
TLS_CERT="${TERRARIUM_TLS_CERT:-}"
TLS_KEY="${TERRARIUM_TLS_KEY:-}"
TLS_CA="${TERRARIUM_TLS_CA:-}"
tls_on() { [[ -n "$TLS_CERT" && -n "$TLS_KEY" && -n "$TLS_CA" ]]; }

say() { printf 'services: %s\n' "$*" >&2; }
fail() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

# Waits up to $1 tenths of a second for the command in $2... to succeed.
wait_for() {
  local tenths=$1; shift
  for ((i = 0; i < tenths; i++)); do "$@" && return 0; sleep 0.1; done
  "$@"
}

# --- PostgreSQL ---------------------------------------------------------------------------

pg_user() {
  if [[ $EUID -ne 0 ]]; then id -un
  elif getent passwd postgres >/dev/null; then echo postgres
  else echo terrarium-pg; fi
}

# Runs a command as the cluster owner (PostgreSQL refuses to run as root).
as_owner() {
  if [[ $EUID -eq 0 ]]; then runuser -u "$(pg_user)" -- "$@"; else "$@"; fi
}

# The newest installed server's binaries (Debian keeps each major version in its own directory).
pg_find_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -V | tail -n1) || true
  [[ -n "$dir" && -x "$dir/postgres" ]] && echo "$dir"
}

pg_install() {
  [[ $EUID -eq 0 ]] || fail "PostgreSQL is missing; install it (apt-get install postgresql) or run as root"
  say "installing postgresql (apt-get)"
  apt-get update -qq >&2
  # The package's own cluster is not started (no init system here); we run our own.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
}

pg_check_binaries() {
  if [[ -z "$PG_BIN" ]]; then
    PG_BIN=$(pg_find_bin) || { pg_install; PG_BIN=$(pg_find_bin) || true; }
  fi
  [[ -n "$PG_BIN" && -x "$PG_BIN/postgres" && -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" ]] ||
    fail "PostgreSQL binaries not found in ${PG_BIN:-/usr/lib/postgresql/*/bin} (set TERRARIUM_PG_BIN)"
}

# The postmaster's pid, when the pid file names a live postgres whose data directory is ours.
pg_pid() {
  local pid cwd
  [[ -r "$PGDATA/postmaster.pid" ]] || return 1
  pid=$(head -n1 "$PGDATA/postmaster.pid" | tr -cd '0-9')
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  cwd=$(readlink -f "/proc/$pid/cwd" 2>/dev/null) || return 1
  [[ "$cwd" == "$(readlink -f "$PGDATA")" ]] || return 1
  echo "$pid"
}

pg_ready() { "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 1 >/dev/null 2>&1; }

pg_init() {
  mkdir -p "$BASE"
  chmod 755 "$BASE"
  [[ -s "$PGDATA/PG_VERSION" ]] && return 0
  if [[ $EUID -eq 0 ]] && ! getent passwd "$(pg_user)" >/dev/null; then
    say "creating system user $(pg_user)"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$(pg_user)"
  fi
  say "initdb $PGDATA"
  mkdir -p "$PGDATA"
  [[ $EUID -eq 0 ]] && chown "$(pg_user)" "$PGDATA"
  chmod 700 "$PGDATA"
  as_owner "$PG_BIN/initdb" -D "$PGDATA" -U "$PG_SUPERUSER" --auth=trust --encoding=UTF8 \
    --locale=C >"$BASE/initdb.log" 2>&1 || { cat "$BASE/initdb.log" >&2; fail "initdb failed"; }
  # Written once: loopback only, trust, enough connections for parallel test processes, and a
  # WAL budget (1 GB: the disk is shared) that keeps the benchmark from checkpointing every few
  # seconds. fsync and synchronous_commit stay at their (durable) defaults.
  as_owner tee -a "$PGDATA/postgresql.conf" >/dev/null <<EOF

# --- scripts/services.sh ---
listen_addresses = '$HOST'
unix_socket_directories = ''
max_connections = 300
shared_buffers = 256MB
max_wal_size = 1GB
logging_collector = off
log_min_messages = warning
EOF
  printf '%s\nhost all all 127.0.0.1/32 trust\n' "$WRITER_HBA" | as_owner tee "$PGDATA/pg_hba.conf" >/dev/null
}

# The writer role logs in with a password: its pg_hba line (added to a cluster initialised
# before it existed, then reloaded), the role, and its rights on the database (CREATE: each
# test makes a schema of its own).
pg_writer_role() {
  if ! as_owner grep -qxF "$WRITER_HBA" "$PGDATA/pg_hba.conf"; then
    say "adding the $WRITER role's pg_hba line"
    as_owner sed -i "1i $WRITER_HBA" "$PGDATA/pg_hba.conf"
    pg_sql postgres "SELECT pg_reload_conf()"
  fi
  pg_sql postgres "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$WRITER') THEN
    CREATE ROLE $WRITER LOGIN PASSWORD '$WRITER_PASSWORD'; END IF; END \$\$"
  pg_sql postgres "GRANT CONNECT, CREATE ON DATABASE $PG_DB TO $WRITER"
}

# Runs one SQL statement as the superuser in database $1.
pg_sql() {
  as_owner env PGOPTIONS="-c default_transaction_read_only=off" "$PG_BIN/psql" -h "$HOST" \
    -p "$PG_PORT" -U "$PG_SUPERUSER" -d "$1" -v ON_ERROR_STOP=1 -Atqc "$2" >/dev/null
}

# A credential rotation ($1 = on): the writer's password changes and its open sessions end, so
# every new connection fails authentication (SQLSTATE 28P01) until `off` sets it back.
pg_rotate_password() {
  pg_pid >/dev/null || fail "postgres not running"
  if [[ $1 == on ]]; then
    say "rotating the $WRITER password, ending its sessions"
    pg_sql postgres "ALTER ROLE $WRITER PASSWORD 'rotated-$RANDOM$RANDOM'"
    pg_sql postgres "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '$WRITER'"
  else
    say "restoring the $WRITER password"
    pg_sql postgres "ALTER ROLE $WRITER PASSWORD '$WRITER_PASSWORD'"
  fi
}

pg_start() {
  pg_check_binaries
  pg_init
  if pg_pid >/dev/null; then
    wait_for 300 pg_ready || fail "postgres (pid $(pg_pid)) runs but does not answer on port $PG_PORT"
    say "postgres already running on $HOST:$PG_PORT"
  else
    touch "$PG_LOG"
    [[ $EUID -eq 0 ]] && chown "$(pg_user)" "$PG_LOG"
    say "starting postgres on $HOST:$PG_PORT"
    # Right after a SIGKILL, orphaned backends may still hold the old shared memory for a moment,
    # and the first start attempt fails: try a few times.
    local started=0 opts="-p $PG_PORT"
    if tls_on; then
      # Copies the server owns (PostgreSQL wants its key readable by the owner only).
      as_owner tee "$PGDATA/server.crt" <"$TLS_CERT" >/dev/null
      as_owner tee "$PGDATA/server.key" <"$TLS_KEY" >/dev/null
      as_owner chmod 600 "$PGDATA/server.key"
      opts="$opts -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
    fi
    for attempt in 1 2 3 4 5; do
      if as_owner "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PG_LOG" -o "$opts" -w -t 120 start >/dev/null; then
        started=1; break
      fi
      say "start attempt $attempt failed, retrying"
      sleep 1
    done
    [[ $started -eq 1 ]] || { tail -n 20 "$PG_LOG" >&2; fail "postgres did not start (log: $PG_LOG)"; }
    wait_for 300 pg_ready || fail "postgres started but does not answer"
  fi
  if [[ "$(as_owner "$PG_BIN/psql" -h "$HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres -Atqc \
      "select 1 from pg_database where datname = '$PG_DB'")" != 1 ]]; then
    say "creating database $PG_DB"
    as_owner "$PG_BIN/createdb" -h "$HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" "$PG_DB"
  fi
  pg_writer_role
}

pg_stop() {
  local pid
  if pid=$(pg_pid); then
    say "stopping postgres (pid $pid)"
    as_owner "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null ||
      fail "pg_ctl stop failed (log: $PG_LOG)"
  else
    say "postgres not running"
  fi
}

# SIGKILLs a server ($1: name, $2: pid) and waits for it to be gone.
kill_server() {
  say "SIGKILL $1 (pid $2)"
  kill -KILL "$2"
  wait_for 100 test ! -d "/proc/$2" || true
}

pg_kill() {
  local pid
  pid=$(pg_pid) || { say "postgres not running"; return 0; }
  kill_server postgres "$pid"
}

# SIGSTOP / SIGCONT ($1) our postmaster and its children (backends, background workers): the
# server hangs with every connection open, as under a stalled disk or a VM pause. Only the
# postmaster named by our pid file and its direct children are signalled.
pg_signal() {
  local pid children
  pid=$(pg_pid) || fail "postgres not running"
  children=$(ps -o pid= --ppid "$pid" | tr -s ' \n' ' ')
  say "SIG$1 postgres (pid $pid and its children)"
  if [[ $1 == STOP ]]; then
    kill "-$1" "$pid"
    [[ -n "${children// /}" ]] && kill "-$1" $children 2>/dev/null || true
  else
    [[ -n "${children// /}" ]] && kill "-$1" $children 2>/dev/null || true
    kill "-$1" "$pid"
  fi
}

# Turns default_transaction_read_only on or off ($1) and reloads: every new transaction of
# every session is then read-only, as on a standby after a failover. (psql's own session is
# read-write whatever the setting, so it can turn it off again.)
pg_readonly() {
  pg_pid >/dev/null || fail "postgres not running"
  say "default_transaction_read_only = $1"
  pg_sql postgres "ALTER SYSTEM SET default_transaction_read_only = $1"
  pg_sql postgres "SELECT pg_reload_conf()"
}

pg_status() {
  if pg_pid >/dev/null && pg_ready; then
    echo "postgres: running on $HOST:$PG_PORT (pid $(pg_pid), data $PGDATA)"
  else
    echo "postgres: not running (port $PG_PORT)"; return 1
  fi
}

# --- Redis --------------------------------------------------------------------------------

redis_install() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  [[ $EUID -eq 0 ]] || fail "redis-server is missing; install it (apt-get install redis-server) or run as root"
  say "installing redis-server (apt-get)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >&2
}

# Redis's pid, when the pid file names a live redis-server.
redis_pid() {
  local pid
  [[ -r "$REDIS_PIDFILE" ]] || return 1
  pid=$(head -n1 "$REDIS_PIDFILE" | tr -cd '0-9')
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == *redis* ]] || return 1
  echo "$pid"
}

redis_cli() {
  if tls_on; then redis-cli --tls --cacert "$TLS_CA" -h "$HOST" -p "$REDIS_PORT" "$@"
  else redis-cli -h "$HOST" -p "$REDIS_PORT" "$@"; fi
}

redis_ready() { [[ "$(redis_cli ping 2>/dev/null)" == PONG ]]; }

redis_start() {
  redis_install
  mkdir -p "$REDIS_DIR"
  if redis_pid >/dev/null; then
    wait_for 100 redis_ready || fail "redis (pid $(redis_pid)) runs but does not answer on port $REDIS_PORT"
    say "redis already running on $HOST:$REDIS_PORT"
    return 0
  fi
  redis_ready && fail "something that is not ours answers on $HOST:$REDIS_PORT"
  # A cache: no persistence, bounded memory, loopback only.
  cat >"$REDIS_DIR/redis.conf" <<EOF
bind $HOST
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile $REDIS_PIDFILE
dir $REDIS_DIR
logfile $REDIS_DIR/redis.log
save ""
appendonly no
maxmemory 1gb
maxmemory-policy allkeys-lru
EOF
  if tls_on; then
    # TLS only: the plain port is off; clients are not asked for certificates.
    cat >>"$REDIS_DIR/redis.conf" <<EOF
port 0
tls-port $REDIS_PORT
tls-cert-file $TLS_CERT
tls-key-file $TLS_KEY
tls-ca-cert-file $TLS_CA
tls-auth-clients no
EOF
  fi
  say "starting redis on $HOST:$REDIS_PORT"
  redis-server "$REDIS_DIR/redis.conf" >&2
  wait_for 100 redis_ready || { tail -n 20 "$REDIS_DIR/redis.log" >&2; fail "redis did not start"; }
}

redis_stop() {
  local pid
  if pid=$(redis_pid); then
    say "stopping redis (pid $pid)"
    kill -CONT "$pid" 2>/dev/null || true # a paused server would never see the TERM
    kill -TERM "$pid"
    wait_for 100 test ! -d "/proc/$pid" || fail "redis (pid $pid) did not stop"
  else
    say "redis not running"
  fi
}

redis_kill() {
  local pid
  pid=$(redis_pid) || { say "redis not running"; return 0; }
  kill_server redis "$pid"
}

redis_signal() {
  local pid
  pid=$(redis_pid) || fail "redis not running"
  say "SIG$1 redis (pid $pid)"
  kill "-$1" "$pid"
}

redis_status() {
  if redis_pid >/dev/null && redis_ready; then
    echo "redis: running on $HOST:$REDIS_PORT (pid $(redis_pid))"
  else
    echo "redis: not running (port $REDIS_PORT)"; return 1
  fi
}

# --- main ---------------------------------------------------------------------------------

print_env() {
  local pg="postgres://$PG_SUPERUSER@$HOST:$PG_PORT/$PG_DB" redis="redis://$HOST:$REDIS_PORT"
  tls_on && redis="rediss://$HOST:$REDIS_PORT"
  echo "export DATABASE_URL=$pg"
  echo "export REDIS_URL=$redis"
  echo "export TERRARIUM_TEST_PG_URL=$pg"
  echo "export TERRARIUM_TEST_REDIS_URL=$redis"
  echo "export TERRARIUM_TEST_PG_WRITER_URL=postgres://$WRITER:$WRITER_PASSWORD@$HOST:$PG_PORT/$PG_DB"
}

# Commands that only look (status, stop) use the binaries found; `start` installs them if none.
[[ -n "$PG_BIN" ]] || PG_BIN=$(pg_find_bin) || PG_BIN=""

case "${1:-start}" in
  start) pg_start; redis_start; print_env ;;
  stop) redis_stop; pg_stop ;;
  status) rc=0; pg_status || rc=1; redis_status || rc=1; exit $rc ;;
  env) print_env ;;
  start-pg) pg_start; print_env ;;
  stop-pg) pg_stop ;;
  start-redis) redis_start; print_env ;;
  stop-redis) redis_stop ;;
  kill-pg) pg_kill ;;
  restart-pg) pg_stop; pg_start; print_env ;;
  kill-redis) redis_kill ;;
  restart-redis) redis_stop; redis_start; print_env ;;
  freeze-pg) pg_signal STOP ;;
  thaw-pg) pg_signal CONT ;;
  readonly-pg) pg_readonly on ;;
  readwrite-pg) pg_readonly off ;;
  rotate-pg-password) pg_rotate_password on ;;
  restore-pg-password) pg_rotate_password off ;;
  pause-redis) redis_signal STOP ;;
  resume-redis) redis_signal CONT ;;
  -h | --help | help) sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) fail "unknown command '$1' (try: $0 help)" ;;
esac
