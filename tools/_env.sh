# Shared by tools/demo and tools/test: make ./.venv with archgrow and its dev extras, once.
# Needs only python3 (>= 3.10) with venv and pip; re-installs when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.archgrow-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "archgrow: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "archgrow: installing archgrow[dev] into $VENV (first run downloads PyTorch, a few minutes)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi
