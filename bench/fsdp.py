"""FSDP at the 1.4b preset on the GPUs of one machine (issue 20): `make gpu-check`, or

    python -m composer.cli.launcher -n <GPUs> -m bench.fsdp [--out FILE]
    python -m composer.cli.launcher -n 2 -m bench.fsdp --quick      (CPU, tiny shapes: the test's run)

What a `train.fsdp: true` run of the 1.4b preset does, at its real shapes and with nothing downloaded:
the 1.4b LM (GPT-NeoX vocabulary, 2,048 positions) with a randomly initialised ViT-SO400M-14-SigLIP-384
tower (729 image tokens, frozen), trained through `make_trainer(fsdp=True)` (Composer's FSDP2, bf16 on
a GPU) on random rows: image-caption rows and text-only rows, so some microbatches hold no image.
Then a second Trainer resumes from the run's checkpoint and goes on, and the whole weights are gathered
and saved as the stages save them. Prints and writes (reports/fsdp_check.json) the step time, tokens
per second, peak memory per GPU, the losses, the checkpoint and weights sizes and the resume step.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from composer.core import DataSpec
from composer.optim import LinearWithWarmupScheduler
from composer.utils import dist
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from vlm.data.batches import Collator
from vlm.model import store
from vlm.model.lm import LM, lm_config
from vlm.model.vision import PatchEncoder, build_clip, image_tensor, tiny_clip_config
from vlm.model.vlm import VLM
from vlm.training.composer_model import ComposerLM
from vlm.training.data import data_spec
from vlm.training.resume import Resume
from vlm.training.trainer import curves_of, device_and_precision, join_processes, make_trainer

ROOT = Path(__file__).resolve().parents[1]
IDS = {"pad": 0, "bos": 1, "eos": 2, "image": 3, "user": 4}  # the special tokens the Collator reads
NEOX_VOCAB = 50_283


class RandomRows(Dataset):
    """`n` rows of `length` random tokens (before the image is expanded); every other one an
    image-caption row ([bos] [image] text) with a random image, the rest text-only."""

    def __init__(self, n: int, length: int, vocab: int, image_size: int, seed: int = 0):
        self.n, self.length, self.vocab, self.image_size, self.seed = n, length, vocab, image_size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(self.seed + i)
        tokens = rng.integers(len(IDS), self.vocab, self.length, dtype=np.int64)
        tokens[0] = IDS["bos"]
        sample = {"tokens": tokens, "mask": np.ones(self.length, np.int64)}
        if i % 2 == 0:
            tokens[1] = IDS["image"]
            pixels = rng.integers(0, 256, (self.image_size, self.image_size, 3), dtype=np.uint8)
            sample["image"] = Image.fromarray(pixels)
        return sample


def build(quick: bool) -> tuple[VLM, int, int]:
    """(VLM, text tokens per row, vocabulary): the 1.4b preset and SigLIP-384, or tiny ones."""
    if quick:
        clip = build_clip(tiny_clip_config(32, 16, 32, 2, 2, 16, vocab_size=300, context_length=8, pad_id=IDS["pad"],
                                           eos_id=IDS["eos"]))
        lm_cfg, length, vocab = lm_config("tiny", 300, 64), 40, 300
    else:
        clip = open_clip.create_model("ViT-SO400M-14-SigLIP-384", pretrained=None)  # random weights, no download
        lm_cfg, length, vocab = lm_config("1.4b", NEOX_VOCAB, 2048), 2048 - 729, NEOX_VOCAB
    encoder = PatchEncoder(clip.visual).freeze()
    return VLM(LM(lm_cfg), encoder, IDS["image"]), length, vocab


def data(vlm: VLM, length: int, vocab: int, batch: int, steps: int) -> DataSpec:
    """This process's share of `steps` global batches of `batch` rows, as the stages' loader gives them."""
    size = vlm.encoder.blank().shape[-1]
    pp = {"size": size, "mean": [0.5] * 3, "std": [0.5] * 3}  # SigLIP's normalisation
    rows = RandomRows(batch * steps, length, vocab, size)
    collate = Collator(IDS, vlm.num_image_tokens, functools.partial(image_tensor, preprocess_cfg=pp))
    share = batch // dist.get_world_size()
    dl = DataLoader(rows, batch_size=share, sampler=dist.get_sampler(rows, shuffle=False), collate_fn=collate)
    return data_spec(dl, collate)


def train(vlm: VLM, spec: DataSpec, steps: int, folder: Path, microbatch: int):
    resume = Resume(folder / "checkpoints", "fsdp-check", interval=steps)  # one whole-state save per run
    trainer = make_trainer(
        ComposerLM(vlm), spec, f"{steps}ba", 3e-4, LinearWithWarmupScheduler(t_warmup="1ba"), "fsdp-check", 0,
        curves=folder / "curves.csv", resume=resume, microbatch_size=microbatch, fsdp=True,
    )
    return trainer, resume


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes on the CPU (the test's run)")
    ap.add_argument("--steps", type=int, default=0, help="steps of the first run (default 10; 4 with --quick)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/fsdp_check.json")
    args = ap.parse_args()
    join_processes()
    world, rank = dist.get_world_size(), dist.get_global_rank()
    steps = args.steps or (4 if args.quick else 10)
    batch, microbatch = (4, 0) if args.quick else (4 * world, 2)
    gpu = device_and_precision()[0] == "gpu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(dist.all_gather_object(tmp)[0])  # the first process's folder, for every process
        torch.manual_seed(0)
        vlm, length, vocab = build(args.quick)
        params = sum(p.numel() for p in vlm.parameters())
        tokens = batch * length + batch // 2 * (vlm.num_image_tokens - 1)  # per step; half the rows hold an image
        trainer, resume = train(vlm, data(vlm, length, vocab, batch, 2 * steps), steps, folder, microbatch)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        trainer.fit()
        seconds = time.time() - t0
        losses = curves_of(trainer).column("loss")
        memory = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
        trainer.close()
        checkpoint = sorted(resume.folder.glob("ba*.pt"))
        # a fresh model, a second Trainer: it must resume from that checkpoint and finish the 2 x steps
        torch.manual_seed(1)
        vlm, length, vocab = build(args.quick)
        trainer, _ = train(vlm, data(vlm, length, vocab, batch, 2 * steps), 2 * steps, folder, microbatch)
        resumed_at = trainer.state.timestamp.batch.value
        trainer.fit()
        later = curves_of(trainer).column("loss")
        weights = store.full_weights(vlm)
        trainer.close()
        report = None
        if rank == 0:
            store.save(vlm, folder / "weights", weights=weights)
            saved = load_file(folder / "weights" / store.WEIGHTS)
            shapes = {k: tuple(v.shape) for k, v in vlm.state_dict().items()}  # DTensors report the whole shape
            report = {
                "device": torch.cuda.get_device_name() if gpu else "cpu", "processes": world,
                "params": params, "global_batch": batch, "microbatch": microbatch,
                "tokens_per_row": {"text": length, "image_caption": length - 1 + vlm.num_image_tokens},
                "seconds_per_step": seconds / steps,
                "tokens_per_sec": tokens * steps / seconds,
                "peak_gpu_memory_gib": memory,
                "loss_first": losses[min(losses)], "loss_last": later[max(later)],
                "checkpoint": checkpoint[-1].name if checkpoint else None,
                "checkpoint_gib": checkpoint[-1].stat().st_size / 2**30 if checkpoint else None,
                "resumed_at": resumed_at,
                "saved_weights_match_the_model": {k: tuple(v.shape) for k, v in saved.items()} == shapes,
                "weights_gib": (folder / "weights" / store.WEIGHTS).stat().st_size / 2**30,
            }
            print(json.dumps(report, indent=2), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        dist.barrier()
    if rank == 0 and not (report["resumed_at"] == steps and report["saved_weights_match_the_model"]):
        raise SystemExit(f"FSDP check failed: resumed at {report['resumed_at']} (expected {steps}), saved weights "
                         f"match the model: {report['saved_weights_match_the_model']}")


if __name__ == "__main__":
    main()
