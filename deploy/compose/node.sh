#!/bin/sh
# Entrypoint of the compose nodes: join the control plane once, then run the agent.
#
# The join token comes from $X0T_JOIN_TOKEN if the operator set it, else from the file
# the enroll service writes ($TOKEN_DIR/$NODE_NAME.token), waited for at most $WAIT_S
# seconds. A state directory that already holds node.crt has joined: the agent starts
# at once (it renews its certificate itself). `exec` makes the agent PID 1's successor,
# so `compose stop` (SIGTERM) reaches it and it leaves the mesh cleanly.
set -eu
: "${NODE_NAME:?set NODE_NAME}" "${NODE_LISTEN:?set NODE_LISTEN (IP:PORT)}"
CONTROL_URL="${CONTROL_URL:-http://control-plane:8700}"
state="${X0T_STATE_DIR:-/var/lib/x0t/node}"

if [ ! -f "$state/node.crt" ]; then
    if [ -z "${X0T_JOIN_TOKEN:-}" ]; then
        file="${TOKEN_DIR:-/var/lib/x0t-tokens}/$NODE_NAME.token"
        waited=0
        while [ ! -s "$file" ]; do
            if [ "$waited" -ge "${WAIT_S:-300}" ]; then
                echo "node.sh: no join token in $file after ${waited} s" >&2
                exit 1
            fi
            sleep 2
            waited=$((waited + 2))
        done
        X0T_JOIN_TOKEN="$(cat "$file")"
        export X0T_JOIN_TOKEN
    fi
    x0t node join "$CONTROL_URL" --state-dir "$state" --name "$NODE_NAME" --listen "$NODE_LISTEN"
    unset X0T_JOIN_TOKEN
fi
exec x0t node run --config "$state/node.toml"
