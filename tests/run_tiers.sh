#!/usr/bin/env bash
# Run the test tiers as two streams at once: e2e (testbed namespaces, real WireGuard) beside
# unit + integration (loopback). The e2e tests spend much of their time waiting on networks
# and processes, and nothing is shared between the streams (e2e runs in its own namespaces),
# so a 2-core CI box finishes both sooner than one after the other. The e2e stream's output
# is printed when both are done; the exit status fails if either stream failed.
set -uo pipefail
cd "$(dirname "$0")/.."
pytest=${PYTEST:-.venv/bin/pytest}
e2e_log=$(mktemp /tmp/cs-e2e-log.XXXXXX)
trap 'rm -f "$e2e_log"' EXIT

"$pytest" -p no:cacheprovider -m "not bench" tests/e2e "$@" >"$e2e_log" 2>&1 &
e2e_pid=$!
"$pytest" -m "not bench" tests --ignore=tests/e2e "$@"
rest=$?
wait "$e2e_pid"
e2e=$?
echo
echo "================================ e2e tier ================================"
cat "$e2e_log"
echo "tiers: unit+integration exit $rest, e2e exit $e2e"
[ "$rest" -eq 0 ] && [ "$e2e" -eq 0 ]
