"""Running a model on the evaluation tasks.

- open-ended VQA and POPE: LLaVA-style prompt `[user] <image> question [assistant]`, greedy
  decoding until eos, answers scored with the VQAv2 rule (POPE: the normalised answer against yes/no);
- multiple choice (ARC-style): the log-likelihood of each option after `question: stem answer:`,
  summed over the option's tokens; the best option is the prediction.
Batches are left-padded with a pad mask, so every row sees exactly its own tokens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlm.data.batches import Collator
from vlm.data.tokenizer import IMAGE_MARK, Codec
from vlm.data.vqa_answers import normalize_answer, vqa_accuracy

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
             max_new_tokens: int) -> list[str]:
    """Greedy answers of a VLM to one question about each image (a file's bytes or a decoded image)."""
    prompts = [np.array(codec.prompt(f"{IMAGE_MARK}\n{q}")) for q in questions]
    seqs = [collate.expand(p, np.zeros_like(p))[0] for p in prompts]
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_pad(seqs, codec.ids["pad"]))
    pixels = collate.image_input(images).to(device)
    eos = codec.ids["eos"]
    out = torch.zeros((len(seqs), 0), dtype=torch.long, device=device)
    done = torch.zeros(len(seqs), dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        logits = model(ids, images=pixels, pad_mask=mask)[:, -1]
        nxt = logits.argmax(-1).masked_fill(done, eos)
        out = torch.cat([out, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(done)[:, None]], dim=1)
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


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def score_vqa(model, collate, codec, items: list[dict], load_image, batch_size: int, max_new_tokens: int) -> dict:
    scores, examples = [], []
    for chunk in batches(items, batch_size):
        preds = generate(model, collate, codec, [it["question"] for it in chunk],
                         [load_image(it["image"]) for it in chunk], max_new_tokens)
        for it, pred in zip(chunk, preds, strict=True):
            scores.append(vqa_accuracy(pred, it["answers"]))
            examples.append((it["question"], pred, it["multiple_choice_answer"]))
    return {"accuracy": float(np.mean(scores)), "examples": examples[:3]}


def score_pope(model, collate, codec, items: list[dict], load_image, batch_size: int, max_new_tokens: int) -> dict:
    hits, yes = [], 0
    for chunk in batches(items, batch_size):
        preds = generate(model, collate, codec, [it["text"] for it in chunk],
                         [load_image(it["image"]) for it in chunk], max_new_tokens)
        for it, pred in zip(chunk, preds, strict=True):
            words = normalize_answer(pred).split()
            answer = words[0] if words else ""
            hits.append(answer == it["label"])
            yes += answer == "yes"
    return {"accuracy": float(np.mean(hits)), "yes_rate": yes / len(items)}


def score_mc(lm: nn.Module, codec: Codec, items: list[dict]) -> dict:
    hits = []
    for it in items:
        scores = option_logprobs(lm, codec, MC_PROMPT.format(stem=it["stem"]), it["choices"])
        hits.append(int(np.argmax(scores)) == it["answer"])
    return {"accuracy": float(np.mean(hits))}
