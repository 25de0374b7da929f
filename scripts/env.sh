# Source me: creates (once) and activates the repo-local virtual environment.
# torch is pinned to the CPU wheel that lies on the development machines; the package's own
# range (torch>=2.2) is then already satisfied, so no install can pull a multi-GB CUDA build.
set -e
L2L_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
L2L_VENV="${L2L_VENV:-$L2L_ROOT/.venv}"
L2L_TORCH="${L2L_TORCH:-torch==2.13.0}"
if [ ! -x "$L2L_VENV/bin/python" ]; then
  echo "[l2l] creating virtual environment in $L2L_VENV" >&2
  python3 -m venv "$L2L_VENV"
fi
STAMP="$L2L_VENV/.l2l-installed"
if [ ! -f "$STAMP" ] || [ "$L2L_ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "[l2l] installing dependencies (first run only)" >&2
  "$L2L_VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$L2L_VENV/bin/python" -m pip install -q "$L2L_TORCH" >&2
  "$L2L_VENV/bin/python" -m pip install -q -e "$L2L_ROOT[test]" >&2
  touch "$STAMP"
fi
export PATH="$L2L_VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
