#!/usr/bin/env bash
# Start, stop and show the local services compare-heads runs against:
#   - an MLflow tracking server (SQLite backend, artifacts proxied by the server),
#   - a Prefect server (SQLite, its home under .services/prefect),
#   - a Prefect process worker polling the work pool `compare-heads-pool`; it runs flow runs
#     with MLFLOW_TRACKING_URI pointing at the MLflow server, so every run logs over HTTP.
#
# Usage: scripts/services.sh up|down|status|deploy|env
#   up      start whatever is not running (idempotent), create the work pool
#   down    stop the worker, then both servers (whole process trees)
#   status  one line per service: up/down, pid, URL, log; exit status 3 unless all are up
#   deploy  create or update every deployment in prefect.yaml (idempotent)
#   env     print PREFECT_API_URL and MLFLOW_TRACKING_URI as shell exports
#
# `up` is idempotent: a service whose pid file names a live process that answers its health
# check is reused. Everything binds to 127.0.0.1 unless COMPARE_HEADS_BIND_HOST says otherwise.
#
# How the plain `.venv/bin/prefect` CLI finds the server: `up` writes `prefect.toml` at the
# repository root (git-ignored) with `[api] url = ...`. Prefect 3 reads `prefect.toml` from
# the current directory, so `.venv/bin/prefect deployment run ...` works from the repository
# root with no environment variables and without touching the user's global ~/.prefect
# profile. `down` removes the file again, so in-process runs (`compare-heads run`, tests)
# fall back to Prefect's ephemeral mode. An explicit PREFECT_API_URL in the environment
# still wins over the file.
#
# Settings (environment variables, all optional):
#   MLFLOW_PORT (5000), PREFECT_PORT (4200)      ports of the two servers
#   COMPARE_HEADS_BIND_HOST (127.0.0.1)           interface both servers bind to
#   COMPARE_HEADS_SERVICES_DIR (<repo>/.services) pid files, logs, the Prefect server's home
#   COMPARE_HEADS_MLFLOW_DIR (<repo>/mlflow)      mlflow.db, artifacts/, server.log
#   COMPARE_HEADS_ARTIFACTS (<mlflow dir>/artifacts) the MLflow artifact store: a folder or s3://, gs://
#   COMPARE_HEADS_WORK_POOL (compare-heads-pool)  the process work pool the worker polls
#   COMPARE_HEADS_WORKER_LIMIT (1)                flow runs the worker runs at once
#   COMPARE_HEADS_WRITE_PREFECT_TOML (1)          0: leave <repo>/prefect.toml alone (tests)
#   COMPARE_HEADS_STARTUP_TIMEOUT (180)           seconds to wait for a server to be healthy
#   COMPARE_HEADS_ZOMBIE_SECONDS (240)            a flow run silent this long is marked Crashed
#       (it must exceed every heartbeat interval on the server: Prefect's default is 180 s)
#   PREFECT_FLOWS_HEARTBEAT_FREQUENCY (30)        seconds between flow-run heartbeats (>= 30)
#   COMPARE_HEADS_MLFLOW_AUTH (0)                 1: MLflow server with its basic-auth app;
#       the admin is MLFLOW_TRACKING_USERNAME (admin) with MLFLOW_TRACKING_PASSWORD (required),
#       which every MLflow client (worker, flow runs, CLI) also reads from the environment
#   COMPARE_HEADS_PREFECT_AUTH (0)                1: Prefect server with basic auth: it takes
#       PREFECT_API_AUTH_STRING (user:password, required), which every Prefect client
#       (worker, flow runs, Dask workers, the CLI) also reads from the environment
#   COMPARE_HEADS_DATABASE (sqlite)               where both servers keep their data:
#       sqlite     files under COMPARE_HEADS_MLFLOW_DIR and the Prefect home (zero set-up)
#       postgres   a PostgreSQL 15 cluster of our own, started and stopped with the servers,
#                  data under COMPARE_HEADS_POSTGRES_DIR (<services dir>/postgres), bound
#                  to 127.0.0.1:COMPARE_HEADS_POSTGRES_PORT (5432), password-protected
#                  (installed with apt-get when missing and running as root)
#       postgresql://USER:PASSWORD@HOST:PORT   an external server: databases
#                  compare_heads_mlflow and compare_heads_prefect on it (created if missing)
#
# Binding beyond 127.0.0.1 (COMPARE_HEADS_BIND_HOST) is refused unless both MLflow and
# Prefect authentication are on.
# Why this is bash and not a tool's (evaluated 2026-12-02 against what the e2e drills need):
#   - `prefect server start --background` (Prefect 3.9) pipes the server's output into a pipe
#     nobody reads once the CLI exits (no log file; a full or closed pipe breaks its logging),
#     trusts a pid file it never checks (after a crash `start` refuses until it is deleted),
#     and covers one of our three services.
#   - supervisord would own pid files and restarts, but not what most of this file does:
#     health waits, refusing changed settings, auth files, PostgreSQL's initdb/pg_ctl and the
#     databases, prefect.toml, the work pool; and `stopasgroup` misses flow runs, which the
#     process worker starts in sessions of their own (stop_service collects them).
#   The MLflow and Prefect calls that a tool does better (run a deployment, read runs) are
#   Python: scripts/run.py.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="$ROOT/.venv/bin"
SERVICES_DIR="${COMPARE_HEADS_SERVICES_DIR:-$ROOT/.services}"
MLFLOW_DIR="${COMPARE_HEADS_MLFLOW_DIR:-$ROOT/mlflow}"
# Where the MLflow server keeps artifacts (models, plots): a folder, or a bucket URI
# (s3://..., gs://...) on a team server, whose credentials only the server needs.
ARTIFACTS="${COMPARE_HEADS_ARTIFACTS:-$MLFLOW_DIR/artifacts}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
BIND_HOST="${COMPARE_HEADS_BIND_HOST:-127.0.0.1}"
WORK_POOL="${COMPARE_HEADS_WORK_POOL:-compare-heads-pool}"
WORKER_LIMIT="${COMPARE_HEADS_WORKER_LIMIT:-1}"
WRITE_PREFECT_TOML="${COMPARE_HEADS_WRITE_PREFECT_TOML:-1}"
STARTUP_TIMEOUT="${COMPARE_HEADS_STARTUP_TIMEOUT:-180}"
ZOMBIE_SECONDS="${COMPARE_HEADS_ZOMBIE_SECONDS:-240}"
HEARTBEAT_SECONDS="${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}"
MLFLOW_AUTH="${COMPARE_HEADS_MLFLOW_AUTH:-0}"
PREFECT_AUTH="${COMPARE_HEADS_PREFECT_AUTH:-0}"
DATABASE="${COMPARE_HEADS_DATABASE:-sqlite}"
PG_DIR="${COMPARE_HEADS_POSTGRES_DIR:-$SERVICES_DIR/postgres}"
PG_PORT="${COMPARE_HEADS_POSTGRES_PORT:-5432}"
PG_USER=compare_heads
MLFLOW_DB=compare_heads_mlflow
PREFECT_DB=compare_heads_prefect
PREFECT_TOML="$ROOT/prefect.toml"
PREFECT_TOML_MARKER="# written by scripts/services.sh"

# Clients reach a wildcard bind through the loopback address.
case "$BIND_HOST" in
    0.0.0.0 | :: | "[::]") CLIENT_HOST=127.0.0.1 ;;
    *) CLIENT_HOST="$BIND_HOST" ;;
esac
MLFLOW_URL="http://$CLIENT_HOST:$MLFLOW_PORT"
PREFECT_UI_URL="http://$CLIENT_HOST:$PREFECT_PORT"
PREFECT_API="$PREFECT_UI_URL/api"

# Every Prefect command below (server, worker, CLI calls) uses the repo-local home and API.
export PREFECT_HOME="$SERVICES_DIR/prefect"
export PREFECT_API_URL="$PREFECT_API"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# Keep the server's UI pointing at the address people open.
export PREFECT_UI_API_URL="$PREFECT_API"
# TensorFlow's start-up banner (oneDNN, CPU features) would fill the worker log and the
# output of `deploy`, which imports the flow; warnings and errors still show.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

log() { printf '%s\n' "$*"; }
fail() {
    printf 'services.sh: %s\n' "$*" >&2
    exit 1
}

pid_file() { printf '%s/%s.pid' "$SERVICES_DIR" "$1"; }
log_file() {
    case "$1" in
        mlflow) printf '%s/server.log' "$MLFLOW_DIR" ;;
        prefect) printf '%s/prefect-server.log' "$SERVICES_DIR" ;;
        worker) printf '%s/worker.log' "$SERVICES_DIR" ;;
    esac
}

# What a service's command line contains: a recycled pid running something else is not it.
command_signature() {
    case "$1" in
        mlflow) printf 'mlflow server' ;;
        prefect) printf 'prefect server start' ;;
        worker) printf 'prefect worker start' ;;
    esac
}

# The pid recorded for a service, if that process is still alive and still the service.
live_pid() {
    local file pid
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$(command_signature "$1")" \
        || return 1
    printf '%s' "$pid"
}

# What a service is started with, recorded beside its pid: `up` never silently keeps a
# service that runs with other settings (auth turned on, another database or interface).
settings_file() { printf '%s/%s.settings' "$SERVICES_DIR" "$1"; }
service_settings() {
    local database
    # The database's kind and host, never its password.
    database="$(printf '%s' "$DATABASE" | sed -E 's#//[^@/]*@#//#')"
    case "$1" in
        mlflow) printf 'bind %s, port %s, auth %s, database %s' "$BIND_HOST" "$MLFLOW_PORT" \
            "$MLFLOW_AUTH" "$database"
            # (said only when set: servers started before the setting existed stay current)
            [[ -z "${COMPARE_HEADS_ARTIFACTS:-}" ]] || printf ', artifacts %s' "$ARTIFACTS" ;;
        prefect) printf 'bind %s, port %s, auth %s, database %s' "$BIND_HOST" "$PREFECT_PORT" \
            "$PREFECT_AUTH" "$database" ;;
        worker) printf 'pool %s, limit %s' "$WORK_POOL" "$WORKER_LIMIT" ;;
    esac
}

# True (and said) when the service runs, answers, and was started with today's settings; a
# running service with other settings is refused, naming both.
already_up() {
    local name="$1" where="$2" pid recorded wanted
    pid="$(live_pid "$name")" && healthy "$name" || return 1
    wanted="$(service_settings "$name")"
    recorded="$(cat "$(settings_file "$name")" 2>/dev/null || true)"
    if [[ "$recorded" != "$wanted" ]]; then
        fail "$name is running (pid $pid) with other settings (${recorded:-not recorded});" \
            "asked for: $wanted. Run 'make down' and then 'make up' to restart it with them."
    fi
    log "$(printf '%-8s' "$name") already up   $where (pid $pid)"
}

record_settings() { service_settings "$1" >"$(settings_file "$1")"; }

healthy() {
    case "$1" in
        mlflow) curl -fsS --max-time 3 "$MLFLOW_URL/health" >/dev/null 2>&1 ;;
        prefect) curl -fsS --max-time 3 "$PREFECT_API/health" >/dev/null 2>&1 ;;
        worker) live_pid worker >/dev/null ;;
    esac
}

port_in_use() {
    # Whether anything accepts connections on the port (bash's /dev/tcp, no extra tools).
    (exec 3<>"/dev/tcp/$CLIENT_HOST/$1") 2>/dev/null
}

# Run a command in its own session (so `down` can stop its whole process group) and record
# its pid. The child writes its own pid: after setsid it is the session and group leader.
start_detached() {
    local name="$1" log
    shift
    log="$(log_file "$name")"
    printf '\n==== %s: starting %s ====\n' "$(date -u +%FT%TZ)" "$name" >>"$log"
    rm -f "$(pid_file "$name")"
    # shellcheck disable=SC2016 # expanded by the inner bash, on purpose
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$(pid_file "$name")" "$@" \
        </dev/null >>"$log" 2>&1 &
    local waited=0
    until [[ -s "$(pid_file "$name")" ]]; do
        sleep 0.1
        waited=$((waited + 1))
        ((waited < 100)) || fail "$name did not start (no pid file); see $log"
    done
}

wait_healthy() {
    local name="$1" url="$2" deadline=$((SECONDS + STARTUP_TIMEOUT))
    until healthy "$name"; do
        if ! live_pid "$name" >/dev/null; then
            log_tail "$name"
            fail "$name exited during start-up; full log: $(log_file "$name")"
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$name"
            fail "$name was not healthy at $url after ${STARTUP_TIMEOUT}s; full log: $(log_file "$name")"
        fi
        sleep 1
    done
}

log_tail() {
    local log
    log="$(log_file "$1")"
    printf -- '---- last lines of %s ----\n' "$log" >&2
    tail -n 30 "$log" >&2 2>/dev/null || true
    printf -- '----\n' >&2
}

check_bind() {
    if [[ "$BIND_HOST" == 127.0.0.1 || "$BIND_HOST" == localhost ]]; then
        return
    fi
    if [[ "$MLFLOW_AUTH" != 1 || "$PREFECT_AUTH" != 1 ]]; then
        fail "COMPARE_HEADS_BIND_HOST=$BIND_HOST would open both servers to other machines;" \
            "refused unless COMPARE_HEADS_MLFLOW_AUTH=1 and COMPARE_HEADS_PREFECT_AUTH=1" \
            "(basic auth on both). Put TLS in front of them too: basic auth sends passwords" \
            "in clear text."
    fi
    log "NOTE: binding to $BIND_HOST: other machines can reach both servers (basic auth on)."
}

# The basic-auth app's settings: its user store beside the tracking database, the admin
# from the same variables MLflow's clients send. Anonymous users get no permission.
write_auth_config() {
    [[ -n "${MLFLOW_TRACKING_PASSWORD:-}" ]] \
        || fail "COMPARE_HEADS_MLFLOW_AUTH=1 needs MLFLOW_TRACKING_PASSWORD (the admin's password)"
    export MLFLOW_TRACKING_USERNAME="${MLFLOW_TRACKING_USERNAME:-admin}"
    (
        umask 077
        cat >"$MLFLOW_DIR/basic_auth.ini" <<EOF
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$MLFLOW_DIR/basic_auth.db
admin_username = $MLFLOW_TRACKING_USERNAME
admin_password = $MLFLOW_TRACKING_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
    )
}

# --- PostgreSQL (COMPARE_HEADS_DATABASE=postgres or postgresql://...) ------------------------

pg_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/pg_ctl" ]] && { printf '%s' "$dir"; return 0; }
    done
    return 1
}

# PostgreSQL refuses to run as root: as root, its commands run as the user "postgres".
as_pg_user() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

ensure_postgres_installed() {
    pg_bin >/dev/null && return 0
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        log "postgres not installed: apt-get install postgresql (once)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq postgresql >/dev/null; } \
            || fail "could not install PostgreSQL with apt-get"
        # Debian's package starts a cluster of its own on 5432: ours needs none of it.
        service postgresql stop >/dev/null 2>&1 || true
    fi
    pg_bin >/dev/null || fail "COMPARE_HEADS_DATABASE=postgres needs PostgreSQL's server" \
        "binaries (Debian: apt-get install postgresql), or give a postgresql:// URL"
}

pg_password() { cat "$PG_DIR/password"; }

pg_url() { # driver database
    if [[ "$DATABASE" == postgres ]]; then
        printf 'postgresql+%s://%s:%s@127.0.0.1:%s/%s' "$1" "$PG_USER" "$(pg_password)" \
            "$PG_PORT" "$2"
    else
        local server="${DATABASE%/}"
        printf '%s/%s' "${server/postgresql:\/\//postgresql+$1://}" "$2"
    fi
}

pg_healthy() {
    "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 3
}

# Our cluster: created once (password auth for every connection), started if not running.
start_postgres() {
    ensure_postgres_installed
    local bin data="$PG_DIR/data"
    bin="$(pg_bin)"
    mkdir -p "$PG_DIR"
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres "$PG_DIR"
        as_pg_user test -w "$PG_DIR" || fail "user postgres cannot write $PG_DIR (a parent" \
            "folder is not traversable); set COMPARE_HEADS_POSTGRES_DIR to a folder it can reach"
    fi
    if [[ ! -s "$data/PG_VERSION" ]]; then
        (umask 077 && "$VENV_BIN/python" -c 'import secrets; print(secrets.token_hex(16))' \
            >"$PG_DIR/password")
        local pwfile="$PG_DIR/initdb-password"
        (umask 077 && pg_password >"$pwfile")
        [[ "$(id -u)" != 0 ]] || chown postgres "$pwfile"
        as_pg_user "$bin/initdb" -D "$data" -U "$PG_USER" --pwfile="$pwfile" \
            --auth=scram-sha-256 --encoding=UTF8 >"$PG_DIR/initdb.log" 2>&1 \
            || { rm -f "$pwfile"; fail "initdb failed; see $PG_DIR/initdb.log"; }
        rm -f "$pwfile"
        log "postgres initialised  $data"
    fi
    if pg_healthy; then
        log "postgres already up   127.0.0.1:$PG_PORT"
    else
        if port_in_use "$PG_PORT"; then
            fail "port $PG_PORT is taken by another PostgreSQL or program; choose another" \
                "with COMPARE_HEADS_POSTGRES_PORT=..."
        fi
        as_pg_user "$bin/pg_ctl" -D "$data" -l "$PG_DIR/postgres.log" -w \
            -t "$STARTUP_TIMEOUT" -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=''" \
            start >/dev/null || { tail -n 20 "$PG_DIR/postgres.log" >&2; fail "postgres did not start"; }
        log "postgres started      127.0.0.1:$PG_PORT (data $data, log $PG_DIR/postgres.log)"
    fi
    create_databases
}

# The two databases, created when missing (idempotent), through the server's own URL.
create_databases() {
    local admin_url
    admin_url="$(pg_url psycopg2 postgres)"
    ADMIN_URL="${admin_url/postgresql+psycopg2/postgresql}" "$VENV_BIN/python" - \
        "$MLFLOW_DB" "$PREFECT_DB" <<'PY' || fail "could not create the databases"
import os, sys
import psycopg2
connection = psycopg2.connect(os.environ["ADMIN_URL"], connect_timeout=10)
connection.autocommit = True
with connection.cursor() as cursor:
    for name in sys.argv[1:]:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')
            print(f"postgres database     {name} created")
PY
}

# Whatever COMPARE_HEADS_DATABASE says now: a cluster of ours that runs is stopped.
stop_postgres() {
    if [[ ! -s "$PG_DIR/data/PG_VERSION" ]] || ! pg_bin >/dev/null; then
        return
    fi
    if as_pg_user "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
        as_pg_user "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null
        log "postgres stopped"
    else
        log "postgres not running"
    fi
}

uses_postgres() { [[ "$DATABASE" == postgres || "$DATABASE" == postgresql://* ]]; }

check_database_setting() {
    case "$DATABASE" in
        sqlite | postgres | postgresql://*) ;;
        *) fail "COMPARE_HEADS_DATABASE=$DATABASE: use sqlite, postgres or postgresql://USER:PASSWORD@HOST:PORT" ;;
    esac
}

start_mlflow() {
    already_up mlflow "$MLFLOW_URL" && return
    if port_in_use "$MLFLOW_PORT"; then
        fail "port $MLFLOW_PORT is taken by a process these scripts did not start;" \
            "stop it or choose another port with MLFLOW_PORT=..."
    fi
    mkdir -p "$MLFLOW_DIR/artifacts"
    local auth_args=()
    if [[ "$MLFLOW_AUTH" == 1 ]]; then
        write_auth_config
        auth_args=(--app-name basic-auth)
        export MLFLOW_AUTH_CONFIG_PATH="$MLFLOW_DIR/basic_auth.ini"
        # The auth app's CSRF protection needs a stable secret: generated once, kept private.
        if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
            [[ -s "$MLFLOW_DIR/flask_secret_key" ]] \
                || (umask 077 && "$VENV_BIN/python" -c 'import secrets; print(secrets.token_hex(32))' \
                    >"$MLFLOW_DIR/flask_secret_key")
            MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$MLFLOW_DIR/flask_secret_key")"
            export MLFLOW_FLASK_SERVER_SECRET_KEY
        fi
        log "mlflow   basic auth on: users in $MLFLOW_DIR/basic_auth.db, admin $MLFLOW_TRACKING_USERNAME"
    fi
    # --serve-artifacts is the default: clients upload artifacts through the server, which
    # stores them under --artifacts-destination. Two workers are plenty on a laptop. The
    # server's job runner (GenAI scorers, prompt optimisation) is unused here and costs
    # about 1.5 GB in seven background processes: off unless asked for.
    # The store's URL goes through the environment, not the command line (which any local
    # user can read in /proc): it may hold the database password.
    local store="sqlite:///$MLFLOW_DIR/mlflow.db"
    uses_postgres && store="$(pg_url psycopg2 "$MLFLOW_DB")"
    MLFLOW_BACKEND_STORE_URI="$store" \
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
        start_detached mlflow "$VENV_BIN/mlflow" server \
            --host "$BIND_HOST" --port "$MLFLOW_PORT" --workers 2 \
            --artifacts-destination "$ARTIFACTS" "${auth_args[@]}"
    record_settings mlflow # at launch (see await_started)
    STARTING+=(mlflow)
}

start_prefect() {
    already_up prefect "$PREFECT_UI_URL" && return
    if port_in_use "$PREFECT_PORT"; then
        fail "port $PREFECT_PORT is taken by a process these scripts did not start;" \
            "stop it or choose another port with PREFECT_PORT=..."
    fi
    mkdir -p "$PREFECT_HOME"
    local database_url="" auth_string=""
    uses_postgres && database_url="$(pg_url asyncpg "$PREFECT_DB")"
    if [[ "$PREFECT_AUTH" == 1 ]]; then
        auth_string="$PREFECT_API_AUTH_STRING" # checked by check_prefect_auth
        log "prefect  basic auth on: clients send PREFECT_API_AUTH_STRING"
    fi
    # Only the server gets these; unset, Prefect keeps SQLite under PREFECT_HOME, no auth.
    (
        [[ -z "$database_url" ]] || export PREFECT_SERVER_DATABASE_CONNECTION_URL="$database_url"
        [[ -z "$auth_string" ]] || export PREFECT_SERVER_API_AUTH_STRING="$auth_string"
        start_detached prefect "$VENV_BIN/prefect" server start \
            --host "$BIND_HOST" --port "$PREFECT_PORT"
    )
    record_settings prefect
    STARTING+=(prefect)
}

# The servers start side by side (each spends seconds importing, on its own core), then
# each is waited for. One already up was not started. Settings are recorded at launch, so
# a server left running by a failed `up` (the other server failed) is known next time.
STARTING=()
await_started() {
    local name="$1" health="$2" shown="$3"
    [[ " ${STARTING[*]} " == *" $name "* ]] || return 0
    wait_healthy "$name" "$health"
    log "$(printf '%-8s' "$name") started      $shown (pid $(live_pid "$name"), log $(log_file "$name"))"
}

ensure_work_pool() {
    if "$VENV_BIN/prefect" work-pool inspect "$WORK_POOL" >/dev/null 2>&1; then
        return
    fi
    "$VENV_BIN/prefect" work-pool create "$WORK_POOL" --type process >/dev/null \
        || fail "could not create work pool $WORK_POOL"
    log "pool     created      $WORK_POOL (process)"
}

start_worker() {
    already_up worker "pool $WORK_POOL" && return
    local log offset deadline=$((SECONDS + 60))
    log="$(log_file worker)"
    offset="$(stat -c %s "$log" 2>/dev/null || echo 0)"
    # Flow runs inherit the worker's environment: they log to the MLflow server over HTTP
    # (with MLFLOW_TRACKING_USERNAME/PASSWORD when set) and send heartbeats, so a run whose
    # process dies is marked Crashed (scripts/zombie_automation.py).
    MLFLOW_TRACKING_URI="$MLFLOW_URL" PREFECT_FLOWS_HEARTBEAT_FREQUENCY="$HEARTBEAT_SECONDS" \
        start_detached worker "$VENV_BIN/prefect" worker start \
        --pool "$WORK_POOL" --type process --limit "$WORKER_LIMIT" \
        --name "compare-heads-worker-$PREFECT_PORT"
    # A worker has no health endpoint: wait for this start's "started!" line, or its death.
    until tail -c "+$((offset + 1))" "$log" | grep -q "started!"; do
        if ! live_pid worker >/dev/null; then
            log_tail worker
            fail "worker exited during start-up; full log: $(log_file worker)"
        fi
        if ((SECONDS >= deadline)); then
            log_tail worker
            fail "worker did not report started within 60s; full log: $(log_file worker)"
        fi
        sleep 1
    done
    record_settings worker
    log "worker   started      pool $WORK_POOL (pid $(live_pid worker), log $(log_file worker))"
}

write_prefect_toml() {
    [[ "$WRITE_PREFECT_TOML" == 1 ]] || return 0
    if [[ -f "$PREFECT_TOML" ]] && ! grep -qF "$PREFECT_TOML_MARKER" "$PREFECT_TOML"; then
        log "NOTE: $PREFECT_TOML exists and was not written by this script; left alone." \
            "Set PREFECT_API_URL=$PREFECT_API to reach the server."
        return
    fi
    cat >"$PREFECT_TOML" <<EOF
$PREFECT_TOML_MARKER up; removed by scripts/services.sh down.
# Points the Prefect CLI, run from this directory, at the local server.
[api]
url = "$PREFECT_API"
EOF
}

remove_prefect_toml() {
    [[ "$WRITE_PREFECT_TOML" == 1 ]] || return 0
    if [[ -f "$PREFECT_TOML" ]] && grep -qF "$PREFECT_TOML_MARKER" "$PREFECT_TOML"; then
        rm -f "$PREFECT_TOML"
    fi
}

# All descendants of a pid, deepest last (flow runs may sit in their own sessions).
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        printf '%s\n' "$child"
        descendants "$child"
    done
}

stop_service() {
    local name="$1" pid pids
    if ! pid="$(live_pid "$name")"; then
        rm -f "$(pid_file "$name")"
        log "$(printf '%-8s' "$name") not running"
        return
    fi
    # Collect the tree first: flow-run processes run in sessions of their own, and would be
    # orphaned (and missed) once the worker is gone.
    pids="$pid $(descendants "$pid" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    kill -TERM -- "-$pid" $pids 2>/dev/null || true
    # The servers exit within a second or two; Prefect's worker can hang in its graceful
    # shutdown, so whatever is left after 5 s is killed.
    local waited=0
    # shellcheck disable=SC2086
    while kill -0 $pids 2>/dev/null && ((waited < 50)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    # shellcheck disable=SC2086
    kill -KILL -- "-$pid" $pids 2>/dev/null || true
    rm -f "$(pid_file "$name")" "$(settings_file "$name")"
    log "$(printf '%-8s' "$name") stopped (pid $pid)"
}

check_port() {
    if ! [[ "$2" =~ ^[0-9]+$ ]] || (($2 < 1 || $2 > 65535)); then
        fail "$1=$2 is not a port number"
    fi
}

# Before anything starts: the servers start side by side, and one must not be left running
# because the other's settings were incomplete.
check_prefect_auth() {
    [[ "$PREFECT_AUTH" != 1 || "${PREFECT_API_AUTH_STRING:-}" == ?*:?* ]] \
        || fail "COMPARE_HEADS_PREFECT_AUTH=1 needs PREFECT_API_AUTH_STRING=user:password" \
            "(the server checks it, clients send it)"
}

cmd_up() {
    check_port MLFLOW_PORT "$MLFLOW_PORT"
    check_port PREFECT_PORT "$PREFECT_PORT"
    [[ "$MLFLOW_PORT" != "$PREFECT_PORT" ]] \
        || fail "MLFLOW_PORT and PREFECT_PORT are both $MLFLOW_PORT: give them different ports"
    [[ -x "$VENV_BIN/mlflow" && -x "$VENV_BIN/prefect" ]] \
        || fail "$VENV_BIN has no mlflow/prefect; run 'make venv' first"
    mkdir -p "$SERVICES_DIR" "$MLFLOW_DIR"
    check_bind
    check_database_setting
    check_prefect_auth
    log "binding to $BIND_HOST (set COMPARE_HEADS_BIND_HOST to change)"
    if [[ "$DATABASE" == postgres ]]; then
        start_postgres
    elif uses_postgres; then
        create_databases
    fi
    start_mlflow
    start_prefect
    await_started mlflow "$MLFLOW_URL/health" "$MLFLOW_URL"
    # Clients of this checkout find the server here when MLFLOW_TRACKING_URI is unset
    # (tracking/runs.py): `compare-heads predict` after `make up` needs no export.
    printf '%s\n' "$MLFLOW_URL" >"$SERVICES_DIR/mlflow_url"
    await_started prefect "$PREFECT_API/health" "$PREFECT_UI_URL"
    write_prefect_toml
    ensure_work_pool
    "$VENV_BIN/python" "$ROOT/scripts/zombie_automation.py" --within "$ZOMBIE_SECONDS" >/dev/null \
        || fail "could not create the zombie flow-run automation on $PREFECT_API"
    start_worker
    log ""
    log "MLflow UI:  $MLFLOW_URL"
    log "Prefect UI: $PREFECT_UI_URL"
}

cmd_deploy() {
    healthy prefect || fail "the Prefect server at $PREFECT_API is not up; run 'make up' first"
    # Every deployment in prefect.yaml, created or updated in place (idempotent). Run from
    # the repository root: the build step there records it as the flow runs' working dir.
    # prefect.yaml names the work pool through this variable: the pool the worker polls.
    # The scheduled deployment retrains on COMPARE_HEADS_SOURCE (default: tfds).
    (cd "$ROOT" && COMPARE_HEADS_WORK_POOL="$WORK_POOL" \
        COMPARE_HEADS_SOURCE="${COMPARE_HEADS_SOURCE:-tfds:cats_vs_dogs}" \
        "$VENV_BIN/prefect" --no-prompt deploy --all) \
        || fail "prefect deploy failed (see the output above)"
}

# Settings a client needs, as shell assignments: eval "$(scripts/services.sh env)".
cmd_env() {
    printf 'export PREFECT_API_URL=%q\n' "$PREFECT_API"
    printf 'export MLFLOW_TRACKING_URI=%q\n' "$MLFLOW_URL"
    printf 'PREFECT_UI_URL=%q\n' "$PREFECT_UI_URL"
}

cmd_down() {
    # The worker first, so it stops picking up runs before the servers go.
    stop_service worker
    stop_service prefect
    stop_service mlflow
    rm -f "$SERVICES_DIR/mlflow_url"
    stop_postgres
    remove_prefect_toml
}

cmd_status() {
    local name pid state url some_down=0 prefect_down=0
    for name in mlflow prefect worker; do
        case "$name" in
            mlflow) url="$MLFLOW_URL" ;;
            prefect) url="$PREFECT_UI_URL" ;;
            worker) url="pool $WORK_POOL" ;;
        esac
        if pid="$(live_pid "$name")"; then
            if healthy "$name"; then state=up; else state="unhealthy"; some_down=1; fi
        else
            pid="-"
            state=down
            some_down=1
        fi
        [[ "$name" != prefect || "$state" == up ]] || prefect_down=1
        printf '%-8s %-10s pid %-8s %s  (log %s)\n' "$name" "$state" "$pid" "$url" \
            "$(log_file "$name")"
    done
    if [[ "$DATABASE" == postgres || -s "$PG_DIR/data/PG_VERSION" ]]; then
        if pg_bin >/dev/null && pg_healthy; then
            state=up
        else
            state=down
            [[ "$DATABASE" != postgres ]] || some_down=1
        fi
        printf '%-8s %-10s %-12s %s  (log %s)\n' postgres "$state" "" "127.0.0.1:$PG_PORT" \
            "$PG_DIR/postgres.log"
    fi
    if [[ "$prefect_down" != 0 && -f "$PREFECT_TOML" ]] && grep -qF "$PREFECT_TOML_MARKER" "$PREFECT_TOML"; then
        log "NOTE: prefect.toml still points the Prefect CLI at $PREFECT_API;" \
            "run 'make up' to restart the services or 'make down' to remove it."
    fi
    return $((some_down ? 3 : 0))
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    deploy) cmd_deploy ;;
    env) cmd_env ;;
    *)
        printf 'usage: %s up|down|status|deploy|env\n' "$0" >&2
        exit 2
        ;;
esac
