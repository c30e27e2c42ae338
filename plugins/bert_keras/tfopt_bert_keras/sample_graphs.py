"""Write one tiny tf2onnx export per TF/Keras route, for developing and golden-testing fusion rules.

``python -m tfopt_bert_keras.sample_graphs OUT_DIR`` writes, each with a JSON of the facts
the fusion needs (model_type, num_heads, hidden_size, num_layers, input names):

- ``savedmodel.onnx``: HF TFBertModel saved with ``save_pretrained(saved_model=True)``, via bert_tf
- ``hf_keras.onnx``: the same HF model handed to bert_keras as a (tf_keras) object
- ``keras_hub.onnx``: keras-hub BertBackbone, bert_keras' default (tf2onnx) route
- ``keras_hub_keras_export.onnx``: the same backbone through Keras 3's ``model.export``
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from tfopt.results import ExportResult, RunContext


def write_sample_graphs(out_dir: Path) -> dict[str, ExportResult]:
    import tfopt_bert_tf
    from tfopt_bert_tf.models import TINY_CONFIG, random_tf_bert

    import tfopt_bert_keras
    from tfopt_bert_keras.models import TINY_BACKBONE, random_backbone

    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="tfopt-sample-graphs-"))
    try:
        hf_model = random_tf_bert(**TINY_CONFIG)
        hf_model.save_pretrained(str(scratch / "hf"), saved_model=True)
        backbone = random_backbone(**TINY_BACKBONE)

        def ctx(name, source=None, **options):
            return RunContext(family=name, source=source, work_dir=scratch / name, options=options)

        exports = {
            "savedmodel": tfopt_bert_tf.export_hook(ctx("savedmodel", str(scratch / "hf" / "saved_model" / "1"))),
            "hf_keras": tfopt_bert_keras.export_model(ctx("hf_keras"), hf_model, "tiny-hf-tf-bert"),
            "keras_hub": tfopt_bert_keras.export_model(ctx("keras_hub"), backbone, "tiny-keras-hub-bert"),
            "keras_hub_keras_export": tfopt_bert_keras.export_model(ctx("keras_export", route="keras"), backbone, "tiny-keras-hub-bert"),
        }
        for name, exported in exports.items():
            shutil.copyfile(exported.model_path, out_dir / f"{name}.onnx")
            facts = dict(asdict(exported.info), inputs=exported.io.inputs, outputs=exported.io.outputs, exporter=exported.exporter)
            (out_dir / f"{name}.json").write_text(json.dumps(facts, indent=1) + "\n")
        return exports
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0] if args else "tfgraphs")
    for name in write_sample_graphs(out_dir):
        print(out_dir / f"{name}.onnx")


if __name__ == "__main__":
    main()
