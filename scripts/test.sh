#!/usr/bin/env bash
# Run the whole test suite. Sets up .venv first when needed (a no-op when nothing changed).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/test_config.py -x
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
source "$repo/scripts/env.sh"
cd "$repo"
exec "$repo/.venv/bin/python" -m pytest "$@"
