#!/usr/bin/env bash
# Runs the python-fido2 interoperability check against `cardgate card-sim`:
# creates a virtualenv under target/, installs the pinned requirements,
# builds the binary and runs tests/interop/fido2_interop.py with it.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/interop-venv
requirements=tests/interop/requirements.txt

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Reinstall only when the pinned requirements changed.
stamp="$venv/.requirements"
if ! cmp -s "$requirements" "$stamp"; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
fi

cargo build --quiet --bin cardgate
"$venv/bin/python" tests/interop/fido2_interop.py target/debug/cardgate
