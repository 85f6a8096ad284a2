"""Byte-level BPE tokenizer (HF `tokenizers`) and the sequence formats every stage shares.

Sequence formats (token ids; `[x]` is a special token):
- text:         [bos] document [eos], documents concatenated and cut into `seq_len` chunks
- caption:      [bos] [image] caption [eos]                  loss on caption and eos
- conversation: [bos] ([user] question [assistant] answer [eos])*   loss on answers and their eos
The single [image] placeholder is expanded to the encoder's number of patch tokens only when a
batch is built, so the token files do not depend on the image encoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = {
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "pad": "<|pad|>",
    "image": "<|image|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
}
IMAGE_MARK = "<image>"  # how LLaVA JSON marks the image in a human turn
BYTE_ALPHABET = 256
MIN_VOCAB = len(SPECIAL_TOKENS) + BYTE_ALPHABET


def train_tokenizer(texts: Iterable[str], vocab_size: int, show_progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE on `texts`; the special tokens get ids 0..5."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the {len(SPECIAL_TOKENS)} special tokens plus the "
            f"{BYTE_ALPHABET} byte symbols (need >= {MIN_VOCAB})"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)  # consumed in batches: a corpus is never held whole
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json; adds any of our special tokens it lacks (ids appended at the end)."""
    path = Path(path)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"{path}: not a readable HF tokenizers tokenizer.json ({e})") from e
    missing = [t for t in SPECIAL_TOKENS.values() if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    return tok


class Codec:
    """Encodes the three sequence formats with one tokenizer; `ids` holds the special token ids."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.ids = {name: tok.token_to_id(text) for name, text in SPECIAL_TOKENS.items()}
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def from_file(cls, path: str | Path) -> Codec:
        return cls(Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def document(self, ids: list[int]) -> list[int]:
        return [self.ids["bos"], *ids, self.ids["eos"]]

    def caption(self, caption_ids: list[int]) -> tuple[list[int], list[int]]:
        """(ids, loss_mask) of an image-caption sample."""
        ids = [self.ids["bos"], self.ids["image"], *caption_ids, self.ids["eos"]]
        return ids, [0, 0] + [1] * (len(caption_ids) + 1)

    def user_turn(self, text: str) -> list[int]:
        """[user] text, with LLaVA's `<image>` mark replaced by the image placeholder token."""
        ids = [self.ids["user"]]
        parts = text.split(IMAGE_MARK)
        for i, part in enumerate(parts):
            if i:
                ids.append(self.ids["image"])
            part = part.strip("\n") if i else part
            if part:
                ids += self.encode(part)
        return ids + [self.ids["assistant"]]

    def conversation(self, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
        """(ids, loss_mask) of (question, answer) turns; the mask marks answers and their eos."""
        ids, mask = [self.ids["bos"]], [0]
        for question, answer in turns:
            q = self.user_turn(question)
            a = self.encode(answer) + [self.ids["eos"]]
            ids += q + a
            mask += [0] * len(q) + [1] * len(a)
        return ids, mask

    def prompt(self, question: str) -> list[int]:
        """The start of a one-turn conversation, for generation at evaluation time."""
        return [self.ids["bos"], *self.user_turn(question)]
