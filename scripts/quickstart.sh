#!/usr/bin/env bash
# Set up pathwarden and run the whole data path on embedded defaults:
# an embedded PostgreSQL server, the gateway, a short-lived token, a query
# through the gateway and the recorded session.
#
#   bash scripts/quickstart.sh                  # run the demo and exit
#   bash scripts/quickstart.sh --keep-running   # leave the gateway up to play with
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/provision.sh
exec .venv/bin/pathwarden demo --workdir demo-data "$@"
