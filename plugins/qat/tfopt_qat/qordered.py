"""``--target cuda``: the QAT model in ONNX Runtime's QOrdered* form (its CUDA int8 path), checked structurally.

Per layer: QOrderedAttention (int8 input, int8 Q/K/V weights, mask index from
EmbedLayerNormalization) -> QOrderedMatMul with the residual as C -> QOrderedLayerNormalization ->
QOrderedMatMul -> QOrderedGelu -> QOrderedMatMul with the residual as C ->
QOrderedLayerNormalization. int8 tensors flow between the ops in row order (ORDER_ROW = 1);
weights are in column order (ORDER_COL = 0: stored as torch's [out, in] rows). The embeddings
(EmbedLayerNormalization) and the pooler/classifier stay fp32, with QuantizeWithOrder /
DequantizeWithOrder at the borders.

Scales: weights use QAT's trained per-channel scales. The QOrdered ops keep every tensor between
them in int8 with a symmetric per-tensor scale, more tensors than QAT fake-quantized (Linear
outputs, residual sums, LayerNorm outputs): those are calibrated as max|x|/127 over a few
training batches of the QAT model (stated in docs/qat.md).

ONNX Runtime has no CPU kernel for these ops (CUDA >= 11.4, sm75+), so the model cannot run
here. What is checked on the CPU: ONNX Runtime loads the graph and resolves every node against
its registered contrib-op schemas (input types, attributes, arity) — the only error left must be
the missing kernel (NOT_IMPLEMENTED). A schema violation is an INVALID_GRAPH error instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from tfopt.errors import TfoptError, first_line
from tfopt.results import ExportResult, FuseResult, RunContext

from .fakequant import QuantLinear

MS = "com.microsoft"
ORDER_COL, ORDER_ROW = 0, 1
CALIBRATION_BATCHES = 4
QORDERED_OPS = ("QOrderedAttention", "QOrderedMatMul", "QOrderedLayerNormalization", "QOrderedGelu")


def calibrate(run) -> dict[str, float]:
    """max|x| of every tensor the QOrdered graph keeps in int8, on training batches (QAT model, fake-quant on)."""
    from .train import tokenize

    model, prepared = run.qat, run.prepared
    amax: dict[str, float] = {}

    def keep(name, tensor):
        amax[name] = max(amax.get(name, 0.0), float(tensor.detach().abs().max()))

    def both(first, second) -> None:  # a forward hook that returns something replaces the output
        return None

    hooks = []
    for index, layer in enumerate(model.base_model.encoder.layer):
        p = f"layer{index}"
        attention = layer.attention
        hooks += [
            attention.self.query.register_forward_hook(lambda m, i, o, p=p: both(keep(f"{p}.x", i[0]), keep(f"{p}.q", o))),
            attention.self.key.register_forward_hook(lambda m, i, o, p=p: keep(f"{p}.k", o)),
            attention.self.value.register_forward_hook(lambda m, i, o, p=p: keep(f"{p}.v", o)),
            attention.output.dense.register_forward_hook(lambda m, i, o, p=p: keep(f"{p}.context", i[0])),
            attention.output.LayerNorm.register_forward_hook(lambda m, i, o, p=p: both(keep(f"{p}.res1", i[0]), keep(f"{p}.ln1", o))),
            layer.intermediate.dense.register_forward_hook(lambda m, i, o, p=p: keep(f"{p}.ffn1", o)),
            layer.output.dense.register_forward_hook(lambda m, i, o, p=p: keep(f"{p}.gelu", i[0])),
            layer.output.LayerNorm.register_forward_hook(lambda m, i, o, p=p: both(keep(f"{p}.res2", i[0]), keep(f"{p}.ln2", o))),
        ]
    texts = prepared.dataset.train_texts
    size = prepared.config.batch_size
    try:
        with torch.inference_mode():
            for start in range(0, min(len(texts), CALIBRATION_BATCHES * size), size):
                model(**tokenize(prepared.tokenizer, texts[start:start + size], prepared.config.max_length))
    finally:
        for hook in hooks:
            hook.remove()
    return amax


def _scale(amax: float) -> np.ndarray:
    return np.array(max(amax, 1e-8) / 127.0, dtype=np.float32)


def build_qordered(run) -> onnx.ModelProto:
    model = run.qat
    config = model.config
    if config.model_type != "bert":
        raise TfoptError(f"--target cuda (QOrdered*) handles BERT models, not {config.model_type}")
    amax = calibrate(run)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, array) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def tensor(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().numpy()

    def weight(q: QuantLinear, name: str) -> tuple[str, str]:
        """int8 B of logical shape [in, out] in column order: its bytes are torch's [out, in] rows."""
        scale = tensor(q.weight_quantizer.scale).reshape(-1)
        w = np.clip(np.rint(tensor(q.linear.weight) / scale[:, None]), -127, 127).astype(np.int8)
        column_order = np.frombuffer(np.ascontiguousarray(w).tobytes(), dtype=np.int8).reshape(w.shape[1], w.shape[0])
        return const(f"{name}.weight", column_order), const(f"{name}.weight_scale", scale.astype(np.float32))

    emb = model.base_model.embeddings
    nodes.append(helper.make_node(
        "EmbedLayerNormalization",
        ["input_ids", "token_type_ids", const("word_embeddings", tensor(emb.word_embeddings.weight)),
         const("position_embeddings", tensor(emb.position_embeddings.weight)),
         const("token_type_embeddings", tensor(emb.token_type_embeddings.weight)),
         const("embeddings.gamma", tensor(emb.LayerNorm.weight)), const("embeddings.beta", tensor(emb.LayerNorm.bias)),
         "attention_mask"],
        ["embeddings", "mask_index"], domain=MS, epsilon=float(emb.LayerNorm.eps), name="EmbedLayerNormalization"))
    first = const("layer0.x.scale", _scale(amax["layer0.x"]))
    nodes.append(helper.make_node("QuantizeWithOrder", ["embeddings", first], ["layer0.x.int8"], domain=MS,
                                  order_input=ORDER_ROW, order_output=ORDER_ROW, name="QuantizeWithOrder"))
    x, x_scale = "layer0.x.int8", first
    for index, layer in enumerate(model.base_model.encoder.layer):
        p = f"layer{index}"
        s = {key: const(f"{p}.{key}.scale", _scale(amax[f"{p}.{key}"]))
             for key in ("q", "k", "v", "context", "res1", "ln1", "ffn1", "gelu", "res2", "ln2")}
        self_attention = layer.attention.self
        wq, sq = weight(self_attention.query, f"{p}.query")
        wk, sk = weight(self_attention.key, f"{p}.key")
        wv, sv = weight(self_attention.value, f"{p}.value")
        nodes.append(helper.make_node(
            "QOrderedAttention",
            [x, x_scale, s["q"], s["k"], s["v"], wq, wk, wv, sq, sk, sv,
             const(f"{p}.query.bias", tensor(self_attention.query.linear.bias)),
             const(f"{p}.key.bias", tensor(self_attention.key.linear.bias)),
             const(f"{p}.value.bias", tensor(self_attention.value.linear.bias)),
             "", "", s["context"], "mask_index"],
            [f"{p}.context.int8"], domain=MS, num_heads=config.num_attention_heads,
            order_input=ORDER_ROW, order_output=ORDER_ROW, order_weight=ORDER_COL, name=f"{p}/QOrderedAttention"))
        w, ws = weight(layer.attention.output.dense, f"{p}.attention_output")
        nodes.append(helper.make_node(
            "QOrderedMatMul",
            [f"{p}.context.int8", s["context"], w, ws, s["res1"],
             const(f"{p}.attention_output.bias", tensor(layer.attention.output.dense.linear.bias)), x, x_scale],
            [f"{p}.res1.int8"], domain=MS, order_A=ORDER_ROW, order_B=ORDER_COL, order_Y=ORDER_ROW, name=f"{p}/attention_output"))
        ln = layer.attention.output.LayerNorm
        nodes.append(helper.make_node(
            "QOrderedLayerNormalization",
            [f"{p}.res1.int8", s["res1"], const(f"{p}.ln1.gamma", tensor(ln.weight)), const(f"{p}.ln1.beta", tensor(ln.bias)), s["ln1"]],
            [f"{p}.ln1.int8"], domain=MS, axis=-1, epsilon=float(ln.eps), order_X=ORDER_ROW, order_Y=ORDER_ROW, name=f"{p}/ln1"))
        w, ws = weight(layer.intermediate.dense, f"{p}.intermediate")
        nodes.append(helper.make_node(
            "QOrderedMatMul",
            [f"{p}.ln1.int8", s["ln1"], w, ws, s["ffn1"], const(f"{p}.intermediate.bias", tensor(layer.intermediate.dense.linear.bias))],
            [f"{p}.ffn1.int8"], domain=MS, order_A=ORDER_ROW, order_B=ORDER_COL, order_Y=ORDER_ROW, name=f"{p}/intermediate"))
        nodes.append(helper.make_node("QOrderedGelu", [f"{p}.ffn1.int8", s["ffn1"], s["gelu"]], [f"{p}.gelu.int8"], domain=MS,
                                      order_X=ORDER_ROW, order_Y=ORDER_ROW, name=f"{p}/gelu"))
        w, ws = weight(layer.output.dense, f"{p}.output")
        nodes.append(helper.make_node(
            "QOrderedMatMul",
            [f"{p}.gelu.int8", s["gelu"], w, ws, s["res2"], const(f"{p}.output.bias", tensor(layer.output.dense.linear.bias)),
             f"{p}.ln1.int8", s["ln1"]],
            [f"{p}.res2.int8"], domain=MS, order_A=ORDER_ROW, order_B=ORDER_COL, order_Y=ORDER_ROW, name=f"{p}/output"))
        ln = layer.output.LayerNorm
        nodes.append(helper.make_node(
            "QOrderedLayerNormalization",
            [f"{p}.res2.int8", s["res2"], const(f"{p}.ln2.gamma", tensor(ln.weight)), const(f"{p}.ln2.beta", tensor(ln.bias)), s["ln2"]],
            [f"{p}.ln2.int8"], domain=MS, axis=-1, epsilon=float(ln.eps), order_X=ORDER_ROW, order_Y=ORDER_ROW, name=f"{p}/ln2"))
        x, x_scale = f"{p}.ln2.int8", s["ln2"]
    nodes.append(helper.make_node("DequantizeWithOrder", [x, x_scale], ["hidden"], domain=MS, order_input=ORDER_ROW,
                                  order_output=ORDER_ROW, to=TensorProto.FLOAT, name="DequantizeWithOrder"))
    # fp32 head: the first token, pooler (tanh) and classifier
    pooler, classifier = model.base_model.pooler.dense, model.classifier
    nodes += [
        helper.make_node("Gather", ["hidden", const("first_token", np.array(0, np.int64))], ["cls"], axis=1, name="first_token"),
        helper.make_node("Gemm", ["cls", const("pooler.weight", tensor(pooler.weight)), const("pooler.bias", tensor(pooler.bias))],
                         ["pooled_linear"], transB=1, name="pooler"),
        helper.make_node("Tanh", ["pooled_linear"], ["pooled"], name="pooler_tanh"),
        helper.make_node("Gemm", ["pooled", const("classifier.weight", tensor(classifier.weight)),
                                  const("classifier.bias", tensor(classifier.bias))], ["logits"], transB=1, name="classifier"),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", "sequence"])
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "qat_qordered", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", config.num_labels])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                             producer_name="tfopt-qat")


def schema_check(path: Path) -> str:
    """ONNX Runtime resolves the graph against its contrib schemas; returns the kernel it lacks (the expected end)."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the kind of error is the result
        message = first_line(exc)
        if "Could not find an implementation" in message:  # NOT_IMPLEMENTED (first_line drops ORT's codes)
            return message
        raise TfoptError(f"{path.name}: ONNX Runtime refuses the QOrdered graph ({message})") from None
    return "loaded (a CPU kernel exists)"


def to_qordered(ctx: RunContext, exported: ExportResult, run) -> FuseResult:
    from tfopt.graph import load_model, save_model
    from tfopt.graph.fusion import count_ops

    from .hooks import FINAL

    start = time.perf_counter()
    work = Path(ctx.work_dir)
    proto = build_qordered(run)
    tmp = work / f".{FINAL}.qordered.tmp"
    onnx.save(proto, str(tmp))
    try:
        message = schema_check(tmp)
        import onnx_ir as ir

        save_model(ir.from_proto(proto), work / FINAL)
    finally:
        tmp.unlink(missing_ok=True)
    counts = count_ops(load_model(work / FINAL))
    layers = exported.info.num_layers
    expected = {"EmbedLayerNormalization": 1, "QOrderedAttention": layers, "QOrderedMatMul": 3 * layers,
                "QOrderedLayerNormalization": 2 * layers, "QOrderedGelu": layers}
    missing = [f"{op}: {want} expected, {counts.get(op, 0)} found" for op, want in expected.items() if counts.get(op, 0) < want]
    ctx.results.setdefault("warnings", []).append(
        f"{FINAL}: QOrdered* (CUDA int8) form checked structurally only: ONNX Runtime resolved it against its contrib "
        f"schemas and stopped at the missing CPU kernel ({message[:120]}); accuracy below is the Q/DQ export's"
    )
    return FuseResult(model_path=work / FINAL, op_counts=counts, rule_counts={"qordered": 1}, expected=expected,
                      missing=missing, seconds=time.perf_counter() - start)
