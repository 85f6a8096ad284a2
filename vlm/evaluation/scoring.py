"""Running a model on the evaluation tasks.

- open-ended VQA and POPE: LLaVA-style prompt `[user] <image> question [assistant]`, greedy
  decoding with a KV cache until eos; VQA answers scored with the VQAv2 rule, POPE answers read by
  POPE's own parse (vlm/evaluation/metrics.py);
- multiple choice (ARC-style): the log-likelihood of each option after `question: stem answer:`,
  summed over the option's tokens; the best option is the prediction;
- multiple choice in caption form (the world's `caption_only`): the same, after the image and the
  start of a caption, laid out as the cooldown's image-caption samples are (`[bos] <image> stem`).
Batches are left-padded with a pad mask, so every row sees exactly its own tokens.

Several processes split a task by whole batches (`my_batches`): every batch holds the same rows
whatever the number of processes, so the answers, and the scores, do not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlm.data.batches import Collator
from vlm.data.tokenizer import IMAGE_MARK, Codec
from vlm.evaluation.metrics import mc_scores, pope_scores, vqa_scores
from vlm.model.lm import KVCache

MC_PROMPT = "question: {stem} answer:"


def left_pad(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, length - len(s) :] = torch.as_tensor(s, dtype=torch.long)
        mask[i, length - len(s) :] = True
    return ids, mask


@torch.no_grad()
def generate(model, collate: Collator, codec: Codec, questions: list[str], images: list[bytes | Image.Image],
             max_new_tokens: int, use_cache: bool = True) -> list[str]:
    """Greedy answers of a VLM to one question about each image (a file's bytes or a decoded image).

    With `use_cache` the prompt is run once (prefill) and each later call feeds only the newest
    token; without it every step recomputes the whole sequence (the reference the cache is tested
    against: the same tokens).
    """
    prompts = [np.array(codec.prompt(f"{IMAGE_MARK}\n{q}")) for q in questions]
    seqs = [collate.expand(p, np.zeros_like(p))[0] for p in prompts]
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_pad(seqs, codec.ids["pad"]))
    pixels = collate.image_input(images).to(device)
    cache = KVCache() if use_cache else None
    eos = codec.ids["eos"]
    out = torch.zeros((len(seqs), 0), dtype=torch.long, device=device)
    done = torch.zeros(len(seqs), dtype=torch.bool, device=device)
    step_ids, step_pixels = ids, pixels
    for _ in range(max_new_tokens):
        logits = model(step_ids, images=step_pixels, pad_mask=mask, cache=cache)[:, -1]
        nxt = logits.argmax(-1).masked_fill(done, eos)
        out = torch.cat([out, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(done)[:, None]], dim=1)
        step_ids, step_pixels = (nxt[:, None], None) if use_cache else (ids, pixels)
    answers = []
    for row in out.tolist():
        row = row[: row.index(eos)] if eos in row else row
        answers.append(codec.decode(row))
    return answers


@torch.no_grad()
def option_logprobs(lm: nn.Module, codec: Codec, prompt: str, options: list[str]) -> list[float]:
    """Sum of log p(option tokens | [bos] prompt) for each option, in one batch."""
    context = [codec.ids["bos"], *codec.encode(prompt)]
    conts = [codec.encode(" " + o) for o in options]
    device = next(lm.parameters()).device
    ids, mask = (t.to(device) for t in left_pad([np.array(context + c) for c in conts], codec.ids["pad"]))
    logp = F.log_softmax(lm(ids, pad_mask=mask).float(), dim=-1)
    scores = []
    for i, c in enumerate(conts):
        n = len(c)
        targets = ids[i, -n:]
        scores.append(float(logp[i, -n - 1 : -1].gather(-1, targets[:, None]).sum()))
    return scores


@torch.no_grad()
def caption_logprobs(vlm, collate: Collator, codec: Codec, items: list[dict], images: list) -> list[list[float]]:
    """Per item, the summed log-probability of each continuation (`choices`) of its caption start
    `stem` after its image, all options of all items in one left-padded batch."""
    rows, spans, pixels = [], [], []
    for it, image in zip(items, images, strict=True):
        start = np.array(codec.caption(codec.encode(it["stem"]))[0][:-1])  # a caption sample, without its eos
        base = collate.expand(start, np.zeros_like(start))[0]
        for option in it["choices"]:
            cont = codec.encode(" " + option)
            rows.append(np.concatenate([base, np.array(cont, base.dtype)]))
            spans.append(len(cont))
            pixels.append(image)
    device = next(vlm.parameters()).device
    ids, mask = (t.to(device) for t in left_pad(rows, codec.ids["pad"]))
    logp = F.log_softmax(vlm(ids, images=collate.image_input(pixels).to(device), pad_mask=mask).float(), dim=-1)
    scores = [float(logp[r, -n - 1 : -1].gather(-1, ids[r, -n:, None]).sum()) for r, n in enumerate(spans)]
    out, r = [], 0
    for it in items:
        out.append(scores[r : r + len(it["choices"])])
        r += len(it["choices"])
    return out


def my_batches(n_items: int, batch_size: int, rank: int = 0, world: int = 1) -> list[range]:
    """The item indices of this process's batches: batch b goes to process b % world."""
    starts = range(0, n_items, batch_size)
    return [range(s, min(s + batch_size, n_items)) for b, s in enumerate(starts) if b % world == rank]


def answer(model, collate, codec, items: list[dict], question_key: str, load_image: Callable, batch_size: int,
           max_new_tokens: int, rank: int = 0, world: int = 1) -> dict[int, str]:
    """{item index: the model's raw answer} for this process's batches of `items`."""
    preds = {}
    for batch in my_batches(len(items), batch_size, rank, world):
        chunk = [items[i] for i in batch]
        answers = generate(model, collate, codec, [it[question_key] for it in chunk],
                           [load_image(it["image"]) for it in chunk], max_new_tokens)
        preds.update(zip(batch, answers, strict=True))
    return preds


def choose(lm: nn.Module, codec: Codec, items: list[dict], rank: int = 0, world: int = 1) -> dict[int, int]:
    """{item index: the option with the highest log-likelihood} for this process's items."""
    return {i: int(np.argmax(option_logprobs(lm, codec, MC_PROMPT.format(stem=items[i]["stem"]),
                                             items[i]["choices"])))
            for batch in my_batches(len(items), 1, rank, world) for i in batch}


def choose_captions(vlm, collate, codec, items: list[dict], load_image: Callable, batch_size: int,
                    rank: int = 0, world: int = 1) -> dict[int, int]:
    """{item index: the chosen continuation} for this process's batches of caption-form items."""
    preds = {}
    for batch in my_batches(len(items), batch_size, rank, world):
        chunk = [items[i] for i in batch]
        scores = caption_logprobs(vlm, collate, codec, chunk, [load_image(it["image"]) for it in chunk])
        preds.update(zip(batch, (int(np.argmax(s)) for s in scores), strict=True))
    return preds


def in_order(preds: dict[int, object], n: int) -> list:
    """A complete {index: prediction} as a list; a missing index is a bug in the split."""
    missing = sorted(set(range(n)) - set(preds))
    if missing:
        raise RuntimeError(f"no prediction for items {missing[:5]} of {n}")
    return [preds[i] for i in range(n)]


# One process, all items: the model's answers and their scores.
def score_vqa(model, collate, codec, items: list[dict], load_image, batch_size: int, max_new_tokens: int) -> dict:
    preds = answer(model, collate, codec, items, "question", load_image, batch_size, max_new_tokens)
    return vqa_scores(items, in_order(preds, len(items)))


def score_pope(model, collate, codec, items: list[dict], load_image, batch_size: int, max_new_tokens: int) -> dict:
    preds = answer(model, collate, codec, items, "text", load_image, batch_size, max_new_tokens)
    return pope_scores(items, in_order(preds, len(items)))


def score_mc(lm: nn.Module, codec: Codec, items: list[dict]) -> dict:
    return mc_scores(items, in_order(choose(lm, codec, items), len(items)))
