"""Fine-tuning (fp32) then quantization-aware training, resumable, on one process or under torchrun.

The same function runs in ``tfopt run --plugin qat`` (one process) and under
``torchrun --nproc_per_node N -m tfopt_qat.train ...`` (DDP: gloo on CPU, nccl on CUDA). The
global batch is the same whatever N: each of the N processes takes every N-th example of each
global batch and DDP averages the gradients, so N processes take the steps one process takes.

Checkpoints live in ``<output>/qat-checkpoints/``: ``<stage>.partial.pt`` (weights, optimizer,
scheduler, RNG, step) every ``checkpoint_every`` steps, replaced by ``<stage>.pt`` (weights only)
when the stage ends. A run finds them and resumes; a checkpoint written for other settings
(data, model, hyper-parameters) is not resumed: training starts over and says so.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from tfopt.errors import TfoptError

from .data import Dataset, load_dataset
from .fakequant import freeze_observers, prepare_qat
from .model import Source, build_model, load_tokenizer, resolve_source

CHECKPOINT_DIR = "qat-checkpoints"
STAGES = ("fp32", "qat")


@dataclass
class TrainConfig:
    """Everything that decides what training computes (the checkpoint fingerprint hashes it)."""

    source: str | None = None
    data: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    max_examples: int = 2000  # 0 = the whole file
    eval_fraction: float = 0.25
    seed: int = 0
    max_length: int = 64
    batch_size: int = 32  # global batch, whatever the number of processes
    epochs: int = 2  # fp32 fine-tuning
    qat_epochs: int = 1
    lr: float = 5e-5
    qat_lr: float = 1e-5
    observer_fraction: float = 0.5  # QAT: ranges follow the data for this share of the steps, then freeze
    distill: float = 0.5  # QAT: weight of the fp32 model's soft labels (KL) against the true labels' (1 - distill)
    checkpoint_every: int = 100

    @classmethod
    def from_options(cls, source: str | None, options: dict) -> "TrainConfig":
        """Options of ``ctx.options`` (``--option epochs=1`` ...) with the same names as the fields."""
        config = cls(source=source)
        for field in dataclasses.fields(cls):
            if field.name != "source" and options.get(field.name) is not None:
                value = options[field.name]
                kind = type(getattr(config, field.name))
                try:
                    setattr(config, field.name, str(value) if field.name == "data" else kind(value))
                except (TypeError, ValueError):
                    raise TfoptError(f"option {field.name}={value!r}: expected {kind.__name__}") from None
        if config.batch_size < 1 or config.epochs < 0 or config.qat_epochs < 1 or config.max_length < 8:
            raise TfoptError("training options: batch_size >= 1, epochs >= 0, qat_epochs >= 1, max_length >= 8")
        return config

    def fingerprint(self, stage: str) -> str:
        fields = dataclasses.asdict(self)
        fields.pop("checkpoint_every")
        if stage == "fp32":
            for name in ("qat_epochs", "qat_lr", "observer_fraction", "distill"):
                fields.pop(name)
        if self.data:
            stat = Path(self.data).expanduser().stat()
            fields["data_file"] = [stat.st_size, int(stat.st_mtime)]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Prepared:
    config: TrainConfig
    source: Source
    dataset: Dataset
    tokenizer: object


def prepare(config: TrainConfig) -> Prepared:
    dataset = load_dataset(
        config.data, text_column=config.text_column, label_column=config.label_column,
        eval_fraction=config.eval_fraction, max_examples=config.max_examples, seed=config.seed,
    )
    source = resolve_source(config.source, dataset.num_labels)
    return Prepared(config, source, dataset, load_tokenizer(source))


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded}


# -- distributed ------------------------------------------------------------------------------

def world() -> tuple[int, int]:
    """(rank, world size); initialises the process group when torchrun started several processes."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), size


def _barrier(size: int) -> None:
    if size > 1:
        import torch.distributed as dist

        dist.barrier()


# -- checkpoints ------------------------------------------------------------------------------

def checkpoint_dir(output: Path) -> Path:
    return Path(output) / CHECKPOINT_DIR


def final_checkpoint(output: Path, stage: str) -> Path:
    return checkpoint_dir(output) / f"{stage}.pt"


def _save(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_final(output: Path, stage: str, config: TrainConfig) -> dict | None:
    path = final_checkpoint(output, stage)
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=False)
    return payload if payload.get("fingerprint") == config.fingerprint(stage) else None


# -- training ---------------------------------------------------------------------------------

def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def _train_stage(
    stage: str,
    model: nn.Module,
    prepared: Prepared,
    output: Path,
    progress: Callable[[str], None],
    teacher: nn.Module | None = None,
) -> None:
    """One stage (fp32 or qat) over its epochs, resuming from ``<stage>.partial.pt`` when it matches."""
    config, data = prepared.config, prepared.dataset
    rank, size = world()
    if config.batch_size % size:
        raise TfoptError(f"batch_size {config.batch_size} must be a multiple of the number of processes ({size})")
    epochs = config.epochs if stage == "fp32" else config.qat_epochs
    lr = config.lr if stage == "fp32" else config.qat_lr
    count = len(data.train_texts)
    per_epoch = (count + config.batch_size - 1) // config.batch_size
    total = per_epoch * epochs
    freeze_at = int(total * config.observer_fraction) if stage == "qat" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max(total, 1)))
    partial = checkpoint_dir(output) / f"{stage}.partial.pt"
    fingerprint = config.fingerprint(stage)
    step = 0
    torch.manual_seed(config.seed + 1000 * rank + (0 if stage == "fp32" else 1))
    if partial.is_file():
        payload = torch.load(partial, map_location="cpu", weights_only=False)
        if payload.get("fingerprint") == fingerprint and payload.get("world_size") == size:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            torch.set_rng_state(payload["rng"][rank])
            step = payload["step"]
            progress(f"{stage}: resuming from step {step}/{total} ({partial})")
        else:
            progress(f"{stage}: {partial.name} was written for other settings; starting over")
    if freeze_at is not None and step >= freeze_at:
        freeze_observers(model)
    trained = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    trained.train()
    start, last_report = time.perf_counter(), 0.0
    loss_sum, loss_count = 0.0, 0
    while step < total:
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng(config.seed + epoch).permutation(count)
        batch = order[index * config.batch_size:(index + 1) * config.batch_size][rank::size]
        if freeze_at is not None and step == freeze_at:
            freeze_observers(model)
        inputs = tokenize(prepared.tokenizer, [data.train_texts[i] for i in batch], config.max_length)
        labels = torch.tensor([data.train_labels[i] for i in batch])
        logits = trained(**inputs).logits
        # mean over the global batch: each process's sum / global count, so DDP's average of
        # the per-process gradients times N equals one process's gradient on the whole batch
        global_count = min(config.batch_size, count - index * config.batch_size)
        loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
        if teacher is not None and config.distill > 0:
            with torch.no_grad():
                soft = torch.softmax(teacher(**inputs).logits, -1)
            kl = nn.functional.kl_div(torch.log_softmax(logits, -1), soft, reduction="sum")
            loss = (1 - config.distill) * loss + config.distill * kl
        loss = loss * size / global_count
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        loss_sum += loss.item()  # this process's share scaled to a batch mean
        loss_count += 1
        now = time.perf_counter() - start
        if step == total or now - last_report >= 10 or step == 1:
            last_report = now
            progress(f"{stage}: {_bar(step, total)} loss {loss_sum / loss_count:.3f} ({now:.0f} s)")
            loss_sum, loss_count = 0.0, 0
        if step % config.checkpoint_every == 0 and step < total:
            _checkpoint_partial(model, optimizer, scheduler, step, fingerprint, partial, rank, size)
    model.eval()
    if rank == 0:
        _save({"model": model.state_dict(), "fingerprint": fingerprint, "stage": stage}, final_checkpoint(output, stage))
        partial.unlink(missing_ok=True)
    _barrier(size)


def _checkpoint_partial(model, optimizer, scheduler, step, fingerprint, path, rank, size) -> None:
    rng = torch.get_rng_state()
    if size > 1:
        import torch.distributed as dist

        states = [None] * size
        dist.all_gather_object(states, rng)
    else:
        states = [rng]
    if rank == 0:
        _save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": states, "step": step, "fingerprint": fingerprint, "world_size": size,
        }, path)
    _barrier(size)


@dataclass
class Trained:
    prepared: Prepared
    fp32: nn.Module  # fine-tuned, eval mode
    qat: nn.Module | None  # fake-quantized, observers frozen, eval mode (None: fp32 only)


def train(config: TrainConfig, output: Path, progress: Callable[[str], None] = lambda m: None, *, with_qat: bool = True) -> Trained:
    """Both stages (fp32 only without ``with_qat``), each skipped when its final checkpoint for these settings exists."""
    prepared = prepare(config)
    output = Path(output)
    data = prepared.dataset
    progress(
        f"data: {data.name}, {len(data.train_texts)} train / {len(data.eval_texts)} held-out examples, "
        f"labels {', '.join(data.label_names)}; model: {prepared.source.name}"
    )
    fp32 = build_model(prepared.source)
    done = load_final(output, "fp32", config)
    if done is not None:
        fp32.load_state_dict(done["model"])
        progress(f"fp32: fine-tuned model found in {final_checkpoint(output, 'fp32')}")
    else:
        _train_stage("fp32", fp32, prepared, output, progress)
    fp32.eval()
    if not with_qat:
        return Trained(prepared, fp32, None)
    # QAT starts from the fine-tuned weights: wrap a copy of the fp32 model (its Linears keep their
    # parameters) rather than load the source from disk again only to overwrite every weight
    qat = prepare_qat(copy.deepcopy(fp32))
    done = load_final(output, "qat", config)
    if done is not None:
        qat.load_state_dict(done["model"])
        progress(f"qat: trained model found in {final_checkpoint(output, 'qat')}")
    else:
        _train_stage("qat", qat, prepared, output, progress, teacher=fp32)
    freeze_observers(qat)
    qat.eval()
    return Trained(prepared, fp32, qat)


def main(argv: list[str] | None = None) -> int:
    """``python -m tfopt_qat.train`` / ``torchrun ... -m tfopt_qat.train``: train only (export with tfopt run)."""
    parser = argparse.ArgumentParser(prog="tfopt_qat.train", description=main.__doc__)
    parser.add_argument("--output", required=True, help="output directory (the one tfopt run --plugin qat will use)")
    parser.add_argument("--model", default=None, help="HF model directory or tiny-bert (default: all-MiniLM-L6-v2)")
    for field in dataclasses.fields(TrainConfig):
        if field.name != "source":
            parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, default=None)
    args = vars(parser.parse_args(argv))
    rank, size = world()
    progress = (lambda message: print(f"[rank 0/{size}] {message}", file=sys.stderr, flush=True)) if rank == 0 else (lambda m: None)
    try:
        config = TrainConfig.from_options(args.pop("model"), args)
        result = train(config, Path(args["output"]), progress)
        if rank == 0:
            from .evaluate import torch_predictions, accuracy_f1

            labels = result.prepared.dataset.eval_labels
            for name, model in (("fp32", result.fp32), ("qat", result.qat)):
                predictions = torch_predictions(model, result.prepared)
                accuracy, f1 = accuracy_f1(labels, predictions, result.prepared.dataset.num_labels)
                print(json.dumps({"model": name, "accuracy": accuracy, "macro_f1": f1, "world_size": size}), flush=True)
    except TfoptError as exc:
        print(f"tfopt_qat.train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
