#!/usr/bin/env bash
# Creates .venv at the repo root with the Python peers of the interop tests
# (tests/python/requirements.txt: tchu-tchu 3.0.4, celery 5.7.0, kombu 5.7.0).
# Idempotent: does nothing when .venv already holds exactly these requirements.
#   bash .ci/python-venv.sh          # then: .venv/bin/celery, .venv/bin/python
# PYTHON overrides the interpreter (default python3.11, the fixtures' Python).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/tests/python/requirements.txt"
stamp="$venv/.tchu-requirements.sha256"
python="${PYTHON:-python3.11}"

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$venv/bin/python" -c 'import tchu_tchu, celery, kombu' 2>/dev/null; then
    echo "python-venv: $venv is up to date ($(basename "$req") unchanged), nothing to do"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "python-venv: $python not found" >&2
    exit 1
fi
if [[ ! -x "$venv/bin/python" ]]; then
    echo "python-venv: creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
fi
echo "python-venv: installing $(grep -v '^#' "$req" | grep -v '^$' | tr '\n' ' ')"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
echo "python-venv: ready: $("$venv/bin/python" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("tchu-tchu", "celery", "kombu", "amqp")))')"
