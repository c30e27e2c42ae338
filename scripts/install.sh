#!/usr/bin/env bash
# Create the two deployments tfopt is tested in, inside the repo:
#   .venv     the host + PyTorch-family adapters (bert_pt, gpt2), transformers 5
#   .venv-tf  the host + TensorFlow/Keras adapters (bert_tf, bert_keras), transformers 4.57 + TF 2.21
# transformers 5 (PyTorch) and 4.57 (the last with TFBertModel) cannot share one environment.
# Idempotent: re-running only installs what changed. torch is pinned (constraints.txt) to the
# CPU wheel; anything else downloads several GB. TFOPT_SKIP_TF=1 skips the TF environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

make_venv() {
    [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --upgrade pip
}

make_venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt \
    -e . \
    -e 'plugins/bert_pt[realweights]' \
    -e plugins/gpt2 \
    pytest sympy

if [ "${TFOPT_SKIP_TF:-0}" != "1" ]; then
    make_venv .venv-tf
    .venv-tf/bin/python -m pip install --quiet -c constraints-tf.txt \
        -e . \
        -e plugins/bert_tf \
        -e plugins/bert_keras \
        pytest
fi
