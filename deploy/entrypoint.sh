#!/bin/sh
# Entry point of the nexus-ops image: nexus-ops-entrypoint COMMAND...
#
# 1. Tokens handed to the container as files (a compose secret, a Kubernetes Secret
#    volume) in NXOPS_SECRETS_DIR (default /run/secrets) are copied into
#    NEXUS_HOME/secrets with the modes nexus-ops wants (folder 0700, files 0600):
#    the agent then uses them instead of generating its own, and Prometheus can
#    scrape /metrics with the same token.
# 2. With NXOPS_MANAGE_SERVER=true (for the agent's container), the OpenCode server
#    follows the container: it is started through the agent as soon as the agent
#    answers, and stopped gracefully through the agent when the container is told to
#    stop (SIGTERM), before the agent itself stops. Without it the agent keeps the
#    server in its stored desired state and leaves it running when it exits.
# 3. Otherwise COMMAND runs in place of this script.
set -eu

install_tokens() {
    source_dir="${NXOPS_SECRETS_DIR:-/run/secrets}"
    target_dir="${NEXUS_HOME:?NEXUS_HOME must be set}/secrets"
    (
        umask 077
        mkdir -p "$target_dir"
        chmod 700 "$target_dir"
        for name in agent.token console.token; do
            if [ -f "$source_dir/$name" ]; then
                cp "$source_dir/$name" "$target_dir/.$name.tmp"
                mv -f "$target_dir/.$name.tmp" "$target_dir/$name"
            fi
        done
    )
}

agent_answers() {
    python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://127.0.0.1:${NEXUS_AGENT_PORT:-1420}/health" >/dev/null 2>&1
}

start_server_when_agent_answers() {
    tries=0
    until agent_answers; do
        tries=$((tries + 1))
        if [ "$tries" -ge "${NXOPS_START_WAIT:-120}" ]; then
            echo "nexus-ops-entrypoint: the agent did not answer; server not started" >&2
            return 1
        fi
        sleep 1
    done
    nexus-ops server start
}

# shellcheck disable=SC2329 # called by the trap below
stop_server_then_agent() {
    trap - TERM INT
    stopping=true
    nexus-ops server stop || echo "nexus-ops-entrypoint: could not stop the server" >&2
    kill -TERM "$agent_pid" 2>/dev/null || true
}

install_tokens
if [ "${NXOPS_MANAGE_SERVER:-false}" != "true" ]; then
    exec "$@"
fi

"$@" &
agent_pid=$!
trap stop_server_then_agent TERM INT
start_server_when_agent_answers &
stopping=false
status=0
wait "$agent_pid" || status=$?
# A trapped signal interrupts the first wait; wait again for the agent to exit.
if kill -0 "$agent_pid" 2>/dev/null; then
    status=0
    wait "$agent_pid" || status=$?
fi
# The agent re-raises the SIGTERM it was stopped with (exit 143): a clean stop here.
if [ "$stopping" = true ] && [ "$status" -eq 143 ]; then
    status=0
fi
exit "$status"
