# shellcheck shell=bash
# pg.sh — a private PostgreSQL 15 server for one test (issue 12): initdb in the
# test's directory, run by an unprivileged account, reachable on a Unix socket
# only (no TCP listener), with password (SCRAM-SHA-256) authentication for the
# role the Guardian uses, so that a test exercises the same login path as a
# real deployment, where the password comes from a file (docs/configuration.md).
#
#   . tests/lib/pg.sh
#   pg_up DIR          make and start the server under DIR/pg; exports
#                      PG_HOST (the socket directory), PG_PORT, PG_DB, PG_USER,
#                      PG_PASSFILE (0600, the role's password), PG_CONNINFO
#                      (a libpq connection string without the password)
#   pg_psql SQL...     run SQL as the Guardian's role (psql -v ON_ERROR_STOP=1)
#   pg_stop            stop the server (fast shutdown; the data stays), for the
#                      fault tests' "server gone in the middle of production"
#   pg_start           start it again on the same socket and data
#   pg_kill            SIGKILL the postmaster (crash, not shutdown), then wait
#                      until its children are gone
#   pg_down            stop it if running; DIR/pg stays for the test's cleanup
#
# As root the server runs as `nobody` (initdb and postgres refuse root); as
# anyone else it runs as that user. Returns 77 (CTest's skip) when PostgreSQL
# 15's server binaries are missing, naming the Debian package.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
_pg_dir="" _pg_as=() _pg_running=0

_pg_log() { echo "pg: $*" >&2; }

pg_up() {
    local dir=$1 pw
    if [ ! -x "$PG_BIN/initdb" ] || [ ! -x "$PG_BIN/pg_ctl" ]; then
        echo "SKIP: PostgreSQL 15's server is missing ($PG_BIN/initdb): apt-get install -y postgresql-15"
        return 77
    fi
    command -v psql >/dev/null || { echo "SKIP: psql is missing: apt-get install -y postgresql-client-15"; return 77; }
    _pg_dir=$dir/pg
    mkdir -p "$_pg_dir/sock" "$_pg_dir/data"
    if [ "$(id -u)" = 0 ]; then
        _pg_as=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
        chown -R nobody:nogroup "$_pg_dir"
        # nobody must reach DIR/pg: every directory above needs o+x
        local d=$_pg_dir
        while d=$(dirname "$d") && [ "$d" != / ]; do
            [ "$(stat -c %A "$d" | cut -c10)" = x ] || [ "$(stat -c %A "$d" | cut -c10)" = t ] || chmod o+x "$d"
        done
    else
        _pg_as=()
    fi
    chmod 0700 "$_pg_dir/data"
    # the socket directory: others may connect (the Guardian may run as
    # another account); the password is what admits them
    chmod 0755 "$_pg_dir/sock"
    PG_PORT=$((20000 + RANDOM % 20000))
    PG_HOST=$_pg_dir/sock PG_DB=guardian PG_USER=guardian
    PG_PASSFILE=$dir/pg.pass
    pw=$(openssl rand -hex 24)
    (umask 077 && printf '%s\n' "$pw" >"$PG_PASSFILE")
    # initdb reads the superuser's password from a file it can open
    (umask 077 && printf '%s\n' "$pw" >"$_pg_dir/initpw")
    [ -z "${_pg_as[*]}" ] || chown nobody:nogroup "$_pg_dir/initpw"
    if ! "${_pg_as[@]}" "$PG_BIN/initdb" -D "$_pg_dir/data" -U "$PG_USER" --auth=scram-sha-256 \
        --pwfile="$_pg_dir/initpw" -E UTF8 --locale=C.UTF-8 >"$_pg_dir/initdb.log" 2>&1; then
        rm -f "$_pg_dir/initpw"
        _pg_log "initdb failed:"
        cat "$_pg_dir/initdb.log" >&2
        return 1
    fi
    rm -f "$_pg_dir/initpw"
    cat >>"$_pg_dir/data/postgresql.conf" <<EOF
# pg.sh: Unix socket only, in the test's directory
listen_addresses = ''
unix_socket_directories = '$_pg_dir/sock'
port = $PG_PORT
fsync = on
synchronous_commit = on
max_connections = 40
EOF
    pg_start || return 1
    PGPASSFILE=/dev/null PGPASSWORD=$pw psql -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres \
        -v ON_ERROR_STOP=1 -c "CREATE DATABASE $PG_DB" || { _pg_log "CREATE DATABASE failed"; return 1; }
    PG_CONNINFO="host=$PG_HOST port=$PG_PORT dbname=$PG_DB user=$PG_USER"
    export PG_HOST PG_PORT PG_DB PG_USER PG_PASSFILE PG_CONNINFO
}

pg_start() {
    [ -n "$_pg_dir" ] || { _pg_log "pg_start before pg_up"; return 1; }
    if ! "${_pg_as[@]}" "$PG_BIN/pg_ctl" -D "$_pg_dir/data" -l "$_pg_dir/server.log" -w -t 30 start \
        >"$_pg_dir/pg_ctl.out" 2>&1; then
        _pg_log "the server did not start:"
        tail -20 "$_pg_dir/server.log" >&2
        return 1
    fi
    _pg_running=1
}

pg_stop() {
    local pid
    [ "$_pg_running" = 1 ] || return 0
    pid=$(head -1 "$_pg_dir/data/postmaster.pid" 2>/dev/null)
    "${_pg_as[@]}" "$PG_BIN/pg_ctl" -D "$_pg_dir/data" -m fast -w -t 30 stop >/dev/null || return 1
    # pg_ctl returns when the pid file is gone; the postmaster exits just after
    for _ in $(seq 100); do
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    _pg_running=0
}

pg_kill() {
    local pid kids k
    [ "$_pg_running" = 1 ] || return 0
    pid=$(head -1 "$_pg_dir/data/postmaster.pid" 2>/dev/null) || return 1
    kids=$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ')
    kill -KILL "$pid" 2>/dev/null || true
    # its children notice the postmaster's death and exit: wait for each
    for k in $pid $kids; do
        for _ in $(seq 100); do
            kill -0 "$k" 2>/dev/null || break
            sleep 0.1
        done
    done
    _pg_running=0
}

pg_psql() {
    PGPASSFILE=/dev/null PGPASSWORD=$(cat "$PG_PASSFILE") psql -X -q -A -t -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" \
        -d "$PG_DB" -v ON_ERROR_STOP=1 "$@"
}

pg_down() {
    [ -n "$_pg_dir" ] || return 0
    pg_stop || pg_kill
}
