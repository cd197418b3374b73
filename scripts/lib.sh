#!/usr/bin/env bash
# The one shell library of flashgate's scripts (scripts/*, loadtest/bench,
# loadtest/scale). Source it after `cd` to the repository root:
#
#   say, die                     messages on stderr (die exits 1)
#   poll, wait_for               run a command until it succeeds (wait_for dies on timeout)
#   need, apt_install            install a missing tool with apt-get (as root, or through sudo)
#   port_open, free_port         loopback ports
#   ensure_services              Redis on 127.0.0.1:$REDIS_PORT, Postgres on 127.0.0.1:$PG_PORT
#   ensure_database, drop_database
#   cargo_target_dir             where cargo puts what it builds
#   start_instance, stop_instance, end_instance   a throwaway flashgate on a free port
#
# JSON (load-test reports, /readyz) is read with jq, installed when missing.

REDIS_PORT="${REDIS_PORT:-6379}"
PG_PORT="${PG_PORT:-5432}"
PG_URL="postgres://postgres@127.0.0.1:$PG_PORT"

say() {
  if [ -t 2 ]; then printf '\033[1m==> %s\033[0m\n' "$*" >&2; else printf '==> %s\n' "$*" >&2; fi
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

random_hex() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# --- waiting ------------------------------------------------------------------

# poll <seconds> <command...>: runs the command (its output discarded) every
# 0.1 s until it succeeds (returns 0) or <seconds> have passed (returns 1).
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# wait_for <what> <seconds> <command...>: poll, or die naming <what>.
wait_for() {
  local what=$1 secs=$2
  shift 2
  poll "$secs" "$@" || die "gave up after ${secs}s waiting for $what"
}

# --- tools --------------------------------------------------------------------

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $* (install it yourself or run as root)"
  fi
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself"
  if [ -z "$APT_UPDATED" ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# need <command> [package]: installs <package> (default: the command's name)
# when <command> is missing.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  apt_install "${2:-$1}"
  command -v "$1" >/dev/null 2>&1 || die "$1 is still missing after installing ${2:-$1}"
}

# cargo_target_dir: where cargo puts what it builds (CARGO_TARGET_DIR,
# cargo's configuration, or target/), as cargo itself reports it.
cargo_target_dir() {
  need jq
  cargo metadata --format-version 1 --no-deps --locked | jq -er .target_directory
}

# --- ports --------------------------------------------------------------------

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: a loopback port nothing listens on, taken below the kernel's
# ephemeral range (where outgoing connections get theirs), so that no
# client connection takes it before the server binds it.
free_port() {
  local lo=32768 hi=60999 base span p
  read -r lo hi 2>/dev/null </proc/sys/net/ipv4/ip_local_port_range || true
  if [ "$lo" -gt 11000 ]; then base=10000 span=$((lo - 10000)); else base=$((hi + 1)) span=$((65535 - hi)); fi
  [ "$span" -gt 0 ] || die "no port range outside the ephemeral one ($lo-$hi)"
  for _ in $(seq 1 100); do
    p=$((base + RANDOM % span))
    if ! port_open "$p"; then
      printf '%s\n' "$p"
      return 0
    fi
  done
  die "no free port found in $base-$((base + span - 1))"
}

# --- Redis and Postgres -------------------------------------------------------

redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  command -v redis-cli >/dev/null 2>&1 && redis_up && return 0
  need redis-server
  need redis-cli redis-tools
  say "starting Redis on 127.0.0.1:$REDIS_PORT"
  mkdir -p /tmp/flashgate-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /tmp/flashgate-redis --logfile /tmp/flashgate-redis/redis.log
  wait_for "Redis on 127.0.0.1:$REDIS_PORT" 20 redis_up
}

pg_ok() { psql "$PG_URL/postgres" -Atqc 'select 1' >/dev/null 2>&1; }

# psql_admin <psql args...>: as postgres@127.0.0.1, stopping at the first error.
psql_admin() { psql "$PG_URL/postgres" -X -q -At -v ON_ERROR_STOP=1 "$@"; }

ensure_postgres() {
  command -v psql >/dev/null 2>&1 && pg_ok && return 0
  if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
    apt_install postgresql postgresql-client
  fi
  need psql postgresql-client
  local cluster
  cluster=$(pg_lsclusters -h | awk -v p="$PG_PORT" '$3 == p { print $1 "/" $2; exit }')
  [ -n "$cluster" ] || die "no PostgreSQL cluster on port $PG_PORT (pg_lsclusters lists them)"
  if ! port_open "$PG_PORT"; then
    say "starting PostgreSQL $cluster"
    as_root pg_ctlcluster --skip-systemctl-redirect "${cluster%/*}" "${cluster#*/}" start || true
    wait_for "PostgreSQL $cluster on 127.0.0.1:$PG_PORT" 30 port_open "$PG_PORT"
  fi
  pg_ok || pg_password_login
  wait_for "a login as postgres@127.0.0.1:$PG_PORT" 15 pg_ok
}

# A fresh Debian cluster lets the postgres role in through the Unix socket
# only (peer authentication: the postgres OS user); over TCP it asks for a
# password, and the role has none. Instead of a `trust` line in
# pg_hba.conf, which would let every local account in as the superuser,
# the role gets a random password, kept in this user's ~/.pgpass (mode
# 600). psql, pgbench and sqlx (flashgate, its tests, the load tool) read
# that file, so the URLs stay passwordless; no system file is edited, and
# only the account that ran this can log in. A role that already has a
# password is left alone: then say it in ~/.pgpass yourself.
pg_password_login() {
  local as_postgres=(as_root runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres)
  local has passfile="${PGPASSFILE:-$HOME/.pgpass}" pw
  has=$("${as_postgres[@]}" -c "select rolpassword is not null from pg_authid where rolname = 'postgres'") ||
    die "postgres@127.0.0.1:$PG_PORT refuses the login, and the postgres OS user cannot reach PostgreSQL through its socket either"
  [ "$has" = f ] ||
    die "postgres@127.0.0.1:$PG_PORT wants the role's password: add the line 127.0.0.1:$PG_PORT:*:postgres:<password> to $passfile"
  say "giving the postgres role a random password, kept in $passfile (PostgreSQL refuses passwordless logins over TCP)"
  pw=$(random_hex)
  # On stdin, not in an argument: no other user sees it in ps.
  printf "ALTER ROLE postgres PASSWORD '%s';\n" "$pw" | "${as_postgres[@]}" >/dev/null
  if ! (umask 077 && printf '127.0.0.1:%s:*:postgres:%s\n' "$PG_PORT" "$pw" >>"$passfile"); then
    printf 'ALTER ROLE postgres PASSWORD NULL;\n' | "${as_postgres[@]}" >/dev/null
    die "could not write $passfile"
  fi
  chmod 600 "$passfile"
}

ensure_services() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) first"
  need curl
  need jq
  ensure_redis
  ensure_postgres
}

ensure_database() { # ensure_database <name>
  [ "$(psql_admin -c "select 1 from pg_database where datname = '$1'")" = 1 ] ||
    psql_admin -c "create database \"$1\""
}

drop_database() { # drop_database <name>: warns (only) when it cannot
  psql_admin -c "drop database if exists \"$1\"" ||
    printf 'warning: could not drop database %s\n' "$1" >&2
}

# --- a throwaway flashgate ----------------------------------------------------

# start_instance <name> [--release] [--cluster <seeds>]: builds flashgate and
# runs it on a free loopback port against a fresh database and key prefix
# (standalone Redis on $REDIS_PORT, or the Redis Cluster at <seeds>), its
# log, in text without colour, in target/<name>-server.log. Sets URL,
# INSTANCE_PID, INSTANCE_DB, INSTANCE_LOG, FLASHGATE_BIN and exports the
# FLASHGATE_* variables a client needs. stop_instance stops it (it must exit
# 0) and drops the database: `trap stop_instance EXIT` before calling this.
start_instance() {
  local name=$1 profile=debug redis="redis://127.0.0.1:$REDIS_PORT" cluster=0
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      --release) profile=release ;;
      --cluster) cluster=1 redis=$2; shift ;;
      *) die "start_instance: unknown option $1" ;;
    esac
    shift
  done
  local build=(cargo build --locked -q -p flashgate)
  [ "$profile" = debug ] || build+=(--release)
  "${build[@]}"
  FLASHGATE_BIN="$(cargo_target_dir)/$profile/flashgate"
  INSTANCE_DB="fg_${name}_$$"
  ensure_database "$INSTANCE_DB"
  local port
  port=$(free_port)
  export FLASHGATE_LISTEN="127.0.0.1:$port"
  export FLASHGATE_DATABASE_URL="$PG_URL/$INSTANCE_DB"
  export FLASHGATE_REDIS_URL="$redis" FLASHGATE_REDIS_CLUSTER="$cluster"
  export FLASHGATE_KEY_PREFIX="${name}$$"
  export FLASHGATE_ADMIN_TOKEN="${name}-admin-token-0123456789abcdef0123456789"
  export FLASHGATE_JWT_SECRET="${name}-jwt-secret-0123456789abcdef0123456789"
  export FLASHGATE_LOG_FORMAT=text
  export RUST_LOG="${RUST_LOG:-warn}"
  mkdir -p target
  INSTANCE_LOG="target/$name-server.log"
  "$FLASHGATE_BIN" serve >"$INSTANCE_LOG" 2>&1 &
  INSTANCE_PID=$!
  URL="http://127.0.0.1:$port"
  export FLASHGATE_URL="$URL"
  wait_for "flashgate's /readyz at $URL (log: $INSTANCE_LOG)" 30 instance_ready
  kill -0 "$INSTANCE_PID" 2>/dev/null || die "flashgate exited during start-up (log: $INSTANCE_LOG)"
}

# Ready, or gone (so that waiting stops at once when the server died).
instance_ready() { gone "$INSTANCE_PID" || curl -fsS "$URL/readyz"; }

gone() { ! kill -0 "$1" 2>/dev/null; }

# stop_instance: SIGTERM, then the server must exit 0 (a graceful shutdown
# is bounded by FLASHGATE_SHUTDOWN_TIMEOUT_MS, 10 s by default; after 30 s
# it is killed); the database is dropped either way. Anything but exit 0
# fails the script, with the log's tail. Meant for `trap stop_instance EXIT`.
stop_instance() { end_instance || exit 1; }

# end_instance: stop_instance that returns 1 instead of exiting, for a trap
# with more to clean up after it.
end_instance() {
  [ -n "${INSTANCE_PID:-}" ] || return 0
  local pid=$INSTANCE_PID status=0 when="after SIGTERM"
  INSTANCE_PID=""
  if kill -TERM "$pid" 2>/dev/null; then
    poll 30 gone "$pid" || { kill -KILL "$pid" 2>/dev/null || true; when="30 s after SIGTERM, then killed"; }
  else
    when="before it was stopped"
  fi
  wait "$pid" || status=$?
  drop_database "$INSTANCE_DB"
  if [ "$status" -ne 0 ]; then
    tail -n 20 "$INSTANCE_LOG" >&2
    printf 'error: flashgate exited with status %s %s (log: %s)\n' "$status" "$when" "$INSTANCE_LOG" >&2
    return 1
  fi
}
