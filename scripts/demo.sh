#!/usr/bin/env bash
# Set up everything (scripts/setup.sh), then run the demo.
# On Raspberry Pi OS run it with sudo. Arguments go to `classroom-server demo`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

./scripts/setup.sh
exec .venv/bin/classroom-server demo "$@"
