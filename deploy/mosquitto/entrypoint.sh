#!/bin/sh
# mosquitto for the gridwatch compose stack: write the password file from the environment on every
# start (so rotating a password is: change .env, `docker compose up -d mosquitto`), then run mosquitto.
#
#   MQTT_BRIDGE_PASSWORD    user gridwatch-bridge   (reads every sensor topic)             required
#   MQTT_DISPATCH_PASSWORD  user gridwatch-dispatch (publishes every team's alerts)        required
#   MQTT_EXTRA_USERS        more users, "name:password" separated by spaces or commas: grid teams
#                           (username = ladder node id) and sensors (username = sensor id), which
#                           the ACL (`gridwatch dispatch mqtt-acl`) confines to their own topics
#   MQTT_PASSWORDS_FILE     optional: a mosquitto password file of more users, already hashed
#                           (`mosquitto_passwd -U`), appended as is: for fleets too big for the env
#   MQTT_PASSWD_FILE        where to write (default /mosquitto/data/passwd)
#
# Passwords reach mosquitto_passwd on stdin, never on a command line (`ps` would show them).
set -eu

PASSWD="${MQTT_PASSWD_FILE:-/mosquitto/data/passwd}"
: "${MQTT_BRIDGE_PASSWORD:?MQTT_BRIDGE_PASSWORD is not set (see .env.example)}"
: "${MQTT_DISPATCH_PASSWORD:?MQTT_DISPATCH_PASSWORD is not set (see .env.example)}"

tmp="$PASSWD.new"
rm -f "$tmp"
umask 077
: > "$tmp"

add_user() {
    printf '%s\n%s\n' "$2" "$2" | mosquitto_passwd "$tmp" "$1" > /dev/null 2>&1 \
        || { echo "entrypoint: cannot add MQTT user '$1'" >&2; exit 2; }
}

add_user gridwatch-bridge "$MQTT_BRIDGE_PASSWORD"
add_user gridwatch-dispatch "$MQTT_DISPATCH_PASSWORD"
for pair in $(printf '%s' "${MQTT_EXTRA_USERS:-}" | tr ',' ' '); do
    user="${pair%%:*}"
    if [ "$user" = "$pair" ] || [ -z "$user" ] || [ -z "${pair#*:}" ]; then
        echo "entrypoint: MQTT_EXTRA_USERS: an entry is not name:password (user '${user}')" >&2
        exit 2
    fi
    add_user "$user" "${pair#*:}"
done
if [ -n "${MQTT_PASSWORDS_FILE:-}" ]; then
    cat "$MQTT_PASSWORDS_FILE" >> "$tmp"
fi
# mosquitto drops root privileges to its own user, which must be able to read the file.
if [ "$(id -u)" = 0 ] && id mosquitto > /dev/null 2>&1; then
    chown mosquitto:mosquitto "$tmp"
fi
mv "$tmp" "$PASSWD"
echo "entrypoint: $(wc -l < "$PASSWD") MQTT users in $PASSWD"

[ "$#" -gt 0 ] || set -- mosquitto -c /mosquitto/gridwatch/mosquitto.conf
exec "$@"
