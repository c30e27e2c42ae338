"""tfopt adapter for Hugging Face ViT image encoders: an example third-party plugin (documented API only).

Sources: ``tiny-vit`` (default; a small config, fixed seed, so ``tfopt verify DIR`` rebuilds the same
weights) or a ViTModel directory. Options: exporter, attn_implementation, precision, tolerance,
batch_sizes, bench_batch_sizes, bench_repeat, bench_warmup. torch is imported inside the hooks.
"""

from pathlib import Path

import numpy as np
from onnxscript.rewriter import pattern

import tfopt
from tfopt.bench import latency_row, ort_session, time_interleaved
from tfopt.feeds import int_tuple, session_feed
from tfopt.graph import FusionRules, encoder_counts, read_io_spec
from tfopt.results import BenchResult, ExportResult, ModelInfo, RunContext, VerifyResult
from tfopt.run_cache import PerRun
from tfopt.torch_kit import chosen_exporter, perturb_vector_params, quiet_export
from tfopt.verify import compare_cases

TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
SEED = 0
_MODELS: PerRun = PerRun()


def load(ctx: RunContext):
    """The run's ViTModel (built once, shared by export, verify and benchmark)."""
    attn = ctx.option("attn_implementation", "sdpa")

    def build():
        import torch
        from transformers import AutoModel, ViTConfig

        if ctx.source in (None, "tiny-vit"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                model = AutoModel.from_config(ViTConfig(**TINY), attn_implementation=attn, add_pooling_layer=False)
            perturb_vector_params(model, seed=SEED)  # distinct biases, as a trained model has
        elif Path(ctx.source, "config.json").is_file():
            model = AutoModel.from_pretrained(ctx.source, attn_implementation=attn, add_pooling_layer=False)
        else:
            raise tfopt.TfoptError(f"{ctx.source}: not 'tiny-vit' and no ViT model directory")
        if model.config.model_type != "vit":
            raise tfopt.TfoptError(f"{ctx.source}: a {model.config.model_type} model, not vit")
        return model.eval()

    return _MODELS.get(ctx, (ctx.source, attn), build)


# The shared SkipLayerNormalization rule leaves a constant addend alone; ViT's first LayerNorm reads one.
def _position_target(op, x, table, gamma, beta):
    total = op.Add(x, table)
    return op.LayerNormalization(total, gamma, beta, _outputs=["out"]), total


def _position_check(context, x, table, out, **_) -> bool:
    """The Add adds a constant (1, patches, hidden) table: ViT's position embeddings."""
    shape = table.const_value.shape if table.const_value is not None else None
    return shape is not None and len(shape) == 3 and shape[0] == 1 and out.producer().attributes.get_int("axis", -1) == -1


def _position_rewrite(op, x, table, gamma, beta, out, **_):
    epsilon = out.producer().attributes.get_float("epsilon", 1e-5)
    out, _mean, _inv_std, total = op.SkipLayerNormalization(x, table, gamma, beta, epsilon=epsilon, _domain="com.microsoft", _outputs=4)
    return out, total


POSITION_RULE = pattern.RewriteRule(_position_target, _position_rewrite, _position_check, name="VitPositionSkipLN")
POSITION_SKIP_LN = FusionRules("vit_position_skip_ln", [POSITION_RULE], before=None)  # after the shared rules


def _hidden_states(model):
    """ViTModel called with a keyword argument (transformers 5 needs it), returning last_hidden_state."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).last_hidden_state

    return HiddenStates().eval()


@tfopt.hookimpl
def export(ctx: RunContext) -> ExportResult:
    import torch

    model, exporter = load(ctx), chosen_exporter(ctx)
    config = model.config
    path = Path(ctx.work_dir) / "exported.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".exported.onnx.tmp")
    example = (torch.randn(2, config.num_channels, config.image_size, config.image_size),)
    names = dict(input_names=["pixel_values"], output_names=["last_hidden_state"])
    ctx.progress(f"exporting {ctx.source or 'tiny-vit'} with the {exporter} exporter ...")
    with quiet_export():
        if exporter == "dynamo":
            batch = {"pixel_values": {0: torch.export.Dim("batch")}}
            torch.onnx.export(_hidden_states(model), example, str(tmp), dynamo=True, dynamic_shapes=batch, external_data=False, **names)
        else:
            axes = {"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}}
            torch.onnx.export(_hidden_states(model), example, str(tmp), dynamo=False, opset_version=17, dynamic_axes=axes, **names)
    tmp.replace(path)  # atomic: a failed export leaves no exported.onnx
    layers = config.num_hidden_layers
    info = ModelInfo(
        "vit", config.num_attention_heads, config.hidden_size, layers,
        expected={**encoder_counts(layers, embed_layer_norm=False), "SkipLayerNormalization": 2 * layers + 1},
        rules=[POSITION_SKIP_LN],
    )
    return ExportResult(model_path=path, io=read_io_spec(path), info=info, exporter=exporter)


@tfopt.hookimpl
def verify(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list) -> VerifyResult:
    import torch

    model, session = load(ctx), ort_session(model_path)
    with torch.inference_mode():
        references = [model(pixel_values=torch.from_numpy(feed["pixel_values"])).last_hidden_state.numpy() for feed in inputs]
    actuals = [session.run(None, session_feed(session, feed))[0] for feed in inputs]
    return compare_cases(
        references, actuals, labels=[{"batch_size": len(feed["pixel_values"])} for feed in inputs],
        precision=ctx.option("precision", "fp32"), reference_name="torch", tolerance=ctx.option("tolerance"),
    )


@tfopt.hookimpl
def benchmark(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    import torch

    if ctx.option("bench_sequence_lengths") is not None:
        raise tfopt.TfoptError("bench_sequence_lengths does not apply: ViT takes images of one size")
    config = (model := load(ctx)).config
    sessions = {label: ort_session(path) for label, path in models.items()}
    rows = []
    for batch in int_tuple(ctx.option("bench_batch_sizes", (1,)), "bench_batch_sizes"):
        ctx.progress(f"benchmarking batch {batch} ...")
        image = np.random.default_rng(SEED).standard_normal((batch, config.num_channels, config.image_size, config.image_size))
        tensor = torch.from_numpy(image.astype(np.float32))
        calls = {"torch": lambda: model(pixel_values=tensor)}
        for label, session in sessions.items():
            calls[label] = lambda session=session, feed=session_feed(session, {"pixel_values": tensor.numpy()}): session.run(None, feed)
        with torch.inference_mode():  # engines alternate in blocks: a slow spell hits all of them
            timed = time_interleaved(calls, warmup=int(ctx.option("bench_warmup", 3)), repeat=int(ctx.option("bench_repeat", 20)))
        rows += [latency_row(engine, batch, 0, seconds, shape={"batch": batch}) for engine, seconds in timed.items()]
    return BenchResult(rows=rows)
