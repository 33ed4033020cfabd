#!/usr/bin/env bash
# Install everything on a fresh Debian/Ubuntu machine and run the connector against a local Mosquitto.
# Without TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN in the environment it talks to the bundled Twilio simulator.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)

[ -x .venv/bin/twilio-connector ] || { python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt '.[aws]'; }

state=${QUICKSTART_STATE:-.quickstart}
case $state in /*) ;; *) state="$PWD/$state" ;; esac  # made absolute: Mosquitto's persistence_location needs it
mkdir -p "$state"
free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt_port=${MQTT_PORT:-$(free_port)}
sed -e "s/^listener .*/listener $mqtt_port 127.0.0.1/" -e "s|^persistence_location .*|persistence_location $state/|" \
    -e "s/^user .*/user $(id -un)/" examples/mosquitto.conf > "$state/mosquitto.conf"
"$mosquitto" -c "$state/mosquitto.conf" >"$state/mosquitto.log" 2>&1 &
helpers=($!)
connector=""
# Whatever ends this script (Ctrl-C, a closing terminal, a supervisor's SIGTERM) stops what it started: the
# connector first, so that it finishes its work and its statuses still reach Mosquitto, then the rest.
stop() {
    trap - EXIT INT TERM HUP
    if [ -n "$connector" ]; then kill -TERM "$connector" 2>/dev/null || true; wait "$connector" 2>/dev/null || true; fi
    kill -TERM "${helpers[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap stop EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap 'stop; exit 129' HUP

args=(--broker "mqtt://127.0.0.1:$mqtt_port" --journal-path "$state/journal.db")
if [ -z "${TWILIO_ACCOUNT_SID:-}" ] || [ -z "${TWILIO_AUTH_TOKEN:-}${TWILIO_API_SECRET:-}" ]; then
    sim_port=$(free_port)
    .venv/bin/twilio-connector simulator --port "$sim_port" >"$state/simulator.log" 2>&1 &
    helpers+=($!)
    export TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000 TWILIO_AUTH_TOKEN=simulator-token
    args+=(--twilio-api-url "http://127.0.0.1:$sim_port" --default-from "${DefaultFromPhoneNumber:-+15005550006}")
    echo "No Twilio credentials in the environment: using the local Twilio simulator on port $sim_port."
fi

broker="mqtt://127.0.0.1:$mqtt_port"
cat <<MSG
Mosquitto listens on 127.0.0.1:$mqtt_port. In another terminal (from $PWD), send a text and see its status:
  .venv/bin/twilio-connector send --broker $broker --to +12345000000 --message "Hello from the edge"
or watch every status and publish as a device would:
  mosquitto_sub -h 127.0.0.1 -p $mqtt_port -q 1 -t twilio/message/status
  mosquitto_pub -h 127.0.0.1 -p $mqtt_port -q 1 -t twilio/txt -m '{"request": {"recipient": {"name": "Darla", "phone_number": "+12345000000", "message": "Hello from the edge"}}, "id": "request123"}'
and look into the journal:
  .venv/bin/twilio-connector journal --journal-path $state/journal.db counts
Stop with Ctrl-C.
MSG
.venv/bin/twilio-connector run "${args[@]}" "$@" &
connector=$!
wait "$connector"
