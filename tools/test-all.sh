#!/usr/bin/env bash
# The one command that runs every test tier (README: "Run all tests").
set -euo pipefail
cd "$(dirname "$0")/.."
