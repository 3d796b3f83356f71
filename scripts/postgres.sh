#!/usr/bin/env bash
# A private PostgreSQL instance for the cluster tests and benchmarks (never the system's
# default cluster): data in ${TALKIE_PG_DIR:-/tmp/talkie-postgres}/data, its socket and log
# beside it, TCP on 127.0.0.1:${TALKIE_PG_PORT:-55432}, trust authentication, fsync on.
#   scripts/postgres.sh start     installs Debian's postgresql if missing, creates the instance
#                                 (role and database "talkie") if missing, starts it; a running
#                                 instance is left running
#   scripts/postgres.sh stop      fast shutdown (nothing to do when it is not running)
#   scripts/postgres.sh restart   fast shutdown and start again (tests restart it mid-batch)
#   scripts/postgres.sh kill      SIGKILL the postmaster and its processes (crash tests)
#   scripts/postgres.sh url       prints postgres://talkie@127.0.0.1:PORT/talkie
#   scripts/postgres.sh status    pg_ctl status (exit 3 when not running, 4 when not created)
# As root, the instance belongs to and runs as the system user postgres (PostgreSQL refuses
# to run as root); otherwise as the calling user.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${TALKIE_PG_DIR:-/tmp/talkie-postgres}
DATA=$DIR/data
LOG=$DIR/postgres.log
PORT=${TALKIE_PG_PORT:-55432}
URL="postgres://talkie@127.0.0.1:$PORT/talkie"

source scripts/lib.sh
usage() { echo "usage: scripts/postgres.sh start|stop|restart|kill|url|status" >&2; exit 2; }

# The newest installed server's binaries (Debian keeps them per version, off PATH).
bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && echo "$dir"
}

# Runs a command as the instance's owner, from a folder that owner can read.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd "$DIR" && runuser -u postgres -- "$@")
    else
        (cd "$DIR" && "$@")
    fi
}

install_if_missing() {
    bindir >/dev/null && return 0
    say "installing Debian packages: postgresql"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
    bindir >/dev/null || { echo "error: postgresql was installed but no /usr/lib/postgresql/*/bin/pg_ctl is there" >&2; exit 2; }
}

running() { [ -d "$DATA" ] && as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

# psql as the superuser over the instance's own socket.
admin_sql() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres -tA -c "$1"; }

create_instance() {
    say "creating a private PostgreSQL instance in $DATA"
    mkdir -p "$DIR"
    chmod 755 "$DIR"   # clients reach the socket in it
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$DIR"
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat > "$DATA/pg_hba.conf" <<'EOF'
# Talkie's private test instance: trust on the socket and on loopback only.
local   all           all                 trust
host    all           all   127.0.0.1/32  trust
host    all           all   ::1/128       trust
local   replication   all                 trust
host    replication   all   127.0.0.1/32  trust
EOF
    echo "include_if_exists = 'talkie.conf'" >> "$DATA/postgresql.conf"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$DATA/pg_hba.conf" "$DATA/postgresql.conf"
    return 0
}

# Written on every start, so TALKIE_PG_PORT and this script's settings always apply.
write_settings() {
    local settings="$DATA/talkie.conf"
    cat > "$settings" <<EOF
# Written by scripts/postgres.sh on every start.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
fsync = on
synchronous_commit = on
full_page_writes = on
max_connections = 200
EOF
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$settings"
    return 0
}

start() {
    install_if_missing
    BIN=$(bindir)
    [ -f "$DATA/PG_VERSION" ] || create_instance
    if running; then
        echo "PostgreSQL is already running ($DATA, port $PORT)"
    else
        write_settings
        say "starting PostgreSQL on 127.0.0.1:$PORT ($DATA)"
        as_owner "$BIN/pg_ctl" start -D "$DATA" -l "$LOG" -w -t 60 >/dev/null || {
            echo "error: PostgreSQL did not start; the end of $LOG:" >&2
            tail -n 20 "$LOG" >&2
            exit 1
        }
    fi
    if [ "$(admin_sql "SELECT 1 FROM pg_roles WHERE rolname = 'talkie'")" != 1 ]; then
        admin_sql "CREATE ROLE talkie SUPERUSER LOGIN"
    fi
    if [ "$(admin_sql "SELECT 1 FROM pg_database WHERE datname = 'talkie'")" != 1 ]; then
        admin_sql "CREATE DATABASE talkie OWNER talkie"
    fi
    echo "$URL"
}

stop() {
    if running; then
        as_owner "$BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 60 >/dev/null
        echo "PostgreSQL stopped"
    else
        echo "PostgreSQL is not running"
    fi
}

restart() {
    [ -f "$DATA/PG_VERSION" ] || { echo "error: no instance in $DATA (scripts/postgres.sh start creates it)" >&2; exit 1; }
    write_settings
    as_owner "$BIN/pg_ctl" restart -D "$DATA" -l "$LOG" -m fast -w -t 60 >/dev/null
    echo "PostgreSQL restarted"
}

crash() {
    local pid pids alive p
    pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "PostgreSQL is not running"
        return 0
    fi
    # The postmaster and every server process at once, as a power cut would (each child
    # runs in a session of its own, so not one process group).
    pids="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    # Gone, not only dead: a zombie postmaster still holds the lock file against a restart
    # (its new parent, init, reaps it within a second or two).
    for _ in $(seq 150); do
        alive=0
        for p in $pids; do
            ps -p "$p" >/dev/null 2>&1 && alive=1
        done
        [ $alive -eq 0 ] && break
        sleep 0.1
    done
    echo "PostgreSQL killed (pid $pid)"
}

case "${1:-}" in
    start) start ;;
    stop) BIN=$(bindir) || { echo "PostgreSQL is not installed"; exit 0; }; stop ;;
    restart) BIN=$(bindir) || { echo "error: PostgreSQL is not installed" >&2; exit 1; }; restart ;;
    kill) crash ;;
    url) echo "$URL" ;;
    status)
        BIN=$(bindir) || { echo "PostgreSQL is not installed"; exit 4; }
        [ -d "$DATA" ] || { echo "no instance in $DATA"; exit 4; }
        as_owner "$BIN/pg_ctl" status -D "$DATA"
        ;;
    *) usage ;;
esac
