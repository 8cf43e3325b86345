#!/usr/bin/env bash
# Create or extend the broker credentials and ACL for citybrain parking.
#
#   ./make-credentials.sh OUTDIR [LOT...]
#
# Runs `citybrain broker credentials OUTDIR --parking --lot LOT...`, the one tool for every
# broker user (parking, and the field's cabinets, services, dispatchers, vehicles: see
# README.md). It writes, in OUTDIR:
#   credentials  "user:password" lines (mode 600): hand each gateway its own line, the
#                service the citybrain-service line. Existing users keep their password;
#                missing ones get a new random one. Delete a line and rerun to revoke.
#   passwd       the Mosquitto password file (hashed), rebuilt from credentials with
#                mosquitto_passwd
#   acl          the Mosquitto ACL: the service reads every lot's reads and writes every
#                lot's acks; gateway gw-LOT may only write TOPIC_ROOT/LOT/reads and read
#                TOPIC_ROOT/LOT/acks (and the field's users, if any, their own topics).
# Then point password_file and acl_file of mosquitto.conf at OUTDIR and reload mosquitto
# (kill -HUP reloads both files).
#
# Environment: TOPIC_ROOT (default citybrain/parking), SERVICE_USER (citybrain-service),
# MOSQUITTO_PASSWD (default: mosquitto_passwd on PATH), CITYBRAIN (the citybrain command;
# default: citybrain on PATH, else this checkout's .venv/bin/citybrain, as under sudo).
set -euo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: $0 OUTDIR [LOT...]" >&2
    exit 2
fi
outdir=$1
shift

here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${CITYBRAIN:-}" ]; then
    read -r -a citybrain <<<"$CITYBRAIN"
elif command -v citybrain >/dev/null 2>&1; then
    citybrain=(citybrain)
elif [ -x "$here/../../.venv/bin/citybrain" ]; then
    citybrain=("$here/../../.venv/bin/citybrain")
else
    echo "citybrain is not installed: pip install it, or set CITYBRAIN to its command" >&2
    exit 2
fi

args=(
    "$outdir" --parking
    --parking-root "${TOPIC_ROOT:-citybrain/parking}"
    --parking-service-user "${SERVICE_USER:-citybrain-service}"
)
for lot in "$@"; do
    args+=("--lot=$lot")
done
exec "${citybrain[@]}" broker credentials "${args[@]}"
