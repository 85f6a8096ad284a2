"""Training-step throughput: our whole stack against a bare PyTorch loop, and model FLOPs against the
machine's own matrix-multiply peak, measured in the same process one after the other.

- **Stack**: Composer's Trainer (with the callbacks, logger and DataSpec every training stage uses,
  `vlm.training.trainer.make_trainer`) reading MDS shards through StreamingDataset and our collator.
- **Bare**: the same model (same init), batch size, optimizer and loss in a plain loop over batches
  already in memory, on the same thread count.

Model FLOPs per trained token (`train_flops_per_token`), as in PaLM's appendix B: 6 x the weights
that multiply activations (every Linear, the output head included; the input embedding is a lookup)
plus 12 x layers x heads x d_head x seq_len for attention's scores and weighted values, forward and
backward, without discounting the causal mask. Utilisation = FLOPs per token x tokens per second
over the peak of a square matrix multiply in the same dtype (`matmul_peak`).

On a GPU the loops run in bf16 autocast (as the trainer does) and the peak is a bf16 matmul's.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from composer.core import Callback, Event, State
from composer.optim import ConstantScheduler, DecoupledAdamW
from streaming import MDSWriter

from vlm.data.batches import Collator
from vlm.data.shards import COLUMNS
from vlm.data.tokenizer import SPECIAL_TOKENS
from vlm.model.lm import LM, LMConfig, lm_config, masked_lm_loss
from vlm.training.composer_model import ComposerLM
from vlm.training.data import dataset, loader
from vlm.training.trainer import device_and_precision, make_trainer

IDS = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
LR = 1e-3  # any LR: the benchmark times steps, it does not train anything useful


@dataclass(frozen=True)
class StepBench:
    """One comparison: `warmup` untimed steps, then `steps` timed ones, of `batch` x `seq_len` tokens."""

    preset: str = "tiny"
    vocab_size: int = 648  # the embedded default's BPE
    seq_len: int = 128
    batch: int = 16
    warmup: int = 5
    steps: int = 20


def train_flops_per_token(cfg: LMConfig, seq_len: int) -> float:
    """Training FLOPs per token (formula in the module docstring)."""
    attn_proj = cfg.d_model * 3 * cfg.n_head * cfg.d_head + cfg.n_head * cfg.d_head * cfg.d_model
    mlp = cfg.d_model * 2 * cfg.ffn_hidden + cfg.ffn_hidden * cfg.d_model
    matmul_weights = cfg.n_layer * (attn_proj + mlp) + cfg.d_model * cfg.vocab_size
    return 6 * matmul_weights + 12 * cfg.n_layer * cfg.n_head * cfg.d_head * seq_len


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of repeated (n x n) @ (n x n) products, the best of a few timed rounds."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        _sync(device)
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            k += 1
        _sync(device)
        best = max(best, 2 * n**3 * k / (time.perf_counter() - t0))
    return best


def random_rows(n: int, seq_len: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """(n, seq_len) int32 token rows that avoid the special tokens (no image placeholder)."""
    return np.random.default_rng(seed).integers(len(IDS), vocab_size, (n, seq_len), dtype=np.int32)


def write_text_shards(rows: np.ndarray, folder: Path) -> None:
    """`rows` as a text source's `train` split in our shard format (vlm/data/shards.py)."""
    with MDSWriter(out=str(folder / "train"), columns=COLUMNS) as out:
        for row in rows:
            out.write({"tokens": row, "mask": np.ones_like(row, dtype=np.uint8), "image": b""})


def bare_tokens_per_sec(lm: LM, rows: np.ndarray, b: StepBench, device: torch.device) -> float:
    """Plain PyTorch: forward, masked loss, backward, AdamW step, over batches already on `device`."""
    lm = lm.to(device).train()
    opt = DecoupledAdamW(lm.parameters(), lr=LR, betas=(0.9, 0.95), eps=1e-8)
    ids = torch.from_numpy(rows.astype(np.int64)).to(device)
    mask = torch.ones_like(ids)
    batches = [(ids[i : i + b.batch], mask[i : i + b.batch]) for i in range(0, len(ids) - b.batch + 1, b.batch)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    t0 = 0.0
    for step in range(b.warmup + b.steps):
        if step == b.warmup:
            _sync(device)
            t0 = time.perf_counter()
        x, m = batches[step % len(batches)]
        with autocast:
            loss = masked_lm_loss(lm(x), x, m)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return b.steps * b.batch * b.seq_len / (time.perf_counter() - t0)


class StepClock(Callback):
    """The wall clock at the end of every batch (after the optimizer step)."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def run_event(self, event: Event, state: State, logger) -> None:
        if event == Event.BATCH_END:
            _sync(self.device)
            self.times.append(time.perf_counter())


def stack_tokens_per_sec(lm: LM, shards: Path, b: StepBench, device: torch.device, work: Path) -> float:
    """Our stack: make_trainer (Composer) over StreamingDataset + StreamingDataLoader + Collator."""
    train = loader(dataset(shards, "train", b.batch, seed=0), Collator(IDS), b.batch)
    clock = StepClock(device)
    trainer = make_trainer(
        ComposerLM(lm), train, f"{b.warmup + b.steps}ba", LR, ConstantScheduler(), "bench", 0,
        curves=work / "curves.csv", timings=work / "timings.csv", callbacks=[clock],
    )
    trainer.fit()
    trainer.close()
    times = clock.times
    return b.steps * b.batch * b.seq_len / (times[b.warmup + b.steps - 1] - times[b.warmup - 1])


def run(b: StepBench, repeats: int = 2) -> dict:
    """Stack and bare, alternated `repeats` times (best of each), and utilisation of the peak."""
    device = torch.device("cuda" if device_and_precision()[0] == "gpu" else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = lm_config(b.preset, b.vocab_size, b.seq_len)
    torch.manual_seed(0)
    model = LM(cfg)
    # enough rows that Streaming never starts a second epoch inside the timed steps
    rows = random_rows(max(2 * (b.warmup + b.steps + 1) * b.batch, 256), b.seq_len, b.vocab_size)
    stack, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # a shard folder per run: Streaming refuses to reuse a live dataset's folder
            work = Path(tmp) / f"run{r}"
            write_text_shards(rows, work / "shards")
            bare.append(bare_tokens_per_sec(copy.deepcopy(model), rows, b, device))
            stack.append(stack_tokens_per_sec(copy.deepcopy(model), work / "shards", b, device, work))
    peak = matmul_peak(device, dtype)
    flops = train_flops_per_token(cfg, b.seq_len)
    return {
        "setup": {**asdict(b), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                  "threads": torch.get_num_threads(), "params": sum(p.numel() for p in model.parameters())},
        "stack_tokens_per_sec": max(stack),
        "bare_tokens_per_sec": max(bare),
        "stack_over_bare": max(stack) / max(bare),
        "flops_per_token": flops,
        "matmul_peak_flops": peak,
        "stack_utilisation": flops * max(stack) / peak,
        "bare_utilisation": flops * max(bare) / peak,
    }
