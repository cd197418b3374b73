#!/usr/bin/env bash
# Shared by scripts/up and scripts/test: make sure Redis and Postgres run on
# loopback, installing them with apt-get when they are missing.

REDIS_PORT="${REDIS_PORT:-6379}"
PG_PORT="${PG_PORT:-5432}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

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

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # wait_for <what> <seconds> <command...>
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within ${secs}s"
}

ensure_redis() {
  if command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
    return 0
  fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  say "starting Redis on 127.0.0.1:$REDIS_PORT"
  mkdir -p /tmp/flashgate-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /tmp/flashgate-redis --logfile /tmp/flashgate-redis/redis.log
  wait_for "Redis" 20 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping
}

pg_ok() { psql "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -Atqc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
  if command -v psql >/dev/null 2>&1 && pg_ok; then
    return 0
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt_install postgresql postgresql-client
  fi
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  local ver
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  if ! port_open "$PG_PORT"; then
    say "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    wait_for "PostgreSQL" 30 port_open "$PG_PORT"
  fi
  if ! pg_ok; then
    # A fresh Debian cluster wants a password over TCP: let the local
    # postgres user in from loopback (development machines only).
    local hba="/etc/postgresql/$ver/main/pg_hba.conf"
    if [ -f "$hba" ] && ! grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
      say "allowing passwordless postgres@127.0.0.1 in $hba (development setup)"
      as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
      as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || true
    fi
    wait_for "PostgreSQL login as postgres@127.0.0.1" 15 pg_ok
  fi
}

ensure_services() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) first"
  command -v curl >/dev/null 2>&1 || apt_install curl
  ensure_redis
  ensure_postgres
}

ensure_database() { # ensure_database <name>
  local exists
  exists=$(psql "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -Atqc "select 1 from pg_database where datname = '$1'")
  [ "$exists" = 1 ] || psql "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -qc "create database \"$1\"" >/dev/null
}

# start_instance <name>: runs target/debug/flashgate on a free port against a
# fresh database and key prefix; sets URL, INSTANCE_PID, INSTANCE_DB and the
# FLASHGATE_* variables; stop_instance stops it and drops the database.
start_instance() {
  local name=$1
  local bin=target/debug/flashgate
  [ -x "$bin" ] || cargo build --locked -p flashgate
  INSTANCE_DB="fg_${name}_$$"
  ensure_database "$INSTANCE_DB"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  export FLASHGATE_LISTEN="127.0.0.1:$port"
  export FLASHGATE_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$INSTANCE_DB"
  export FLASHGATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  export FLASHGATE_KEY_PREFIX="${name}$$"
  export FLASHGATE_ADMIN_TOKEN="${name}-admin-token-0123456789abcdef0123456789"
  export FLASHGATE_JWT_SECRET="${name}-jwt-secret-0123456789abcdef0123456789"
  export RUST_LOG="${RUST_LOG:-warn}"
  "$bin" serve >"target/$name-server.log" 2>&1 &
  INSTANCE_PID=$!
  URL="http://127.0.0.1:$port"
  export FLASHGATE_URL="$URL"
  wait_for "flashgate" 30 curl -fsS "$URL/readyz"
}

stop_instance() {
  [ -n "${INSTANCE_PID:-}" ] || return 0
  kill "$INSTANCE_PID" 2>/dev/null || true
  wait "$INSTANCE_PID" 2>/dev/null || true
  psql "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -qc "drop database if exists \"$INSTANCE_DB\"" >/dev/null 2>&1 || true
  INSTANCE_PID=""
}
