#!/usr/bin/env bash
# A bounded load for the epoll test server: N quick requests, then one "burn MS" request, then
# N more quick ones. Loopback only. Usage: load.sh PORT N BURN_MS
set -euo pipefail
port=$1 n=${2:-20} burn_ms=${3:-300}
request() {
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf '%s\n' "$1" >&3
  read -r answer <&3
  exec 3>&-
  [ "$answer" = ok ]
}
for _ in $(seq "$n"); do request quick; done
request "burn $burn_ms"
for _ in $(seq "$n"); do request quick; done
