#!/usr/bin/env bash
# Run the test suites of both deployments (after scripts/install.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
echo "== PyTorch deployment (.venv): host, bert_pt, gpt2, llama, longformer, vision, clip, seq2seq, examples/vit, qat"
.venv/bin/python -m pytest -q -m "not slow" -p no:cacheprovider tests plugins/bert_pt plugins/gpt2 plugins/llama plugins/longformer plugins/vision plugins/clip plugins/seq2seq examples/vit plugins/qat "$@" || status=$?
if [ -x .venv-tf/bin/python ]; then
    echo "== TensorFlow deployment (.venv-tf): host, bert_tf, bert_keras"
    .venv-tf/bin/python -m pytest -q -m "not slow" -p no:cacheprovider tests plugins/bert_tf plugins/bert_keras "$@" || status=$?
fi
exit $status
