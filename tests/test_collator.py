"""The batch collator: placeholder expansion, right padding, sample kinds and images in sample order."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from PIL import Image

from vlm.data.batches import CAPTION, INSTRUCT, TEXT, Collator, best_cut, blank_like, decode_image, real_tokens
from vlm.model.vision import image_tensor, preprocess_config
from vlm.training.data import loader

IDS = {"bos": 10, "eos": 11, "pad": 12, "image": 13, "user": 14, "assistant": 15}
N_IMG, SIZE = 4, 8
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
to_tensor = functools.partial(image_tensor, preprocess_cfg=preprocess_config(SIZE))


def png(rgb: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def sample(tokens: list[int], mask: list[int] | None = None, image: bytes = b"") -> dict:
    mask = [1] * len(tokens) if mask is None else mask
    return {"tokens": np.array(tokens, np.int32), "mask": np.array(mask, np.uint8), "image": image}


def text(n: int = 6) -> dict:
    return sample([IDS["bos"], *range(20, 20 + n - 2), IDS["eos"]])


def caption(rgb=RED) -> dict:
    return sample([IDS["bos"], IDS["image"], 30, 31, IDS["eos"]], [0, 0, 1, 1, 1], png(rgb))


def instruct(rgb=None) -> dict:
    question = [IDS["user"], *([IDS["image"]] if rgb else []), 40, 41, IDS["assistant"]]
    tokens = [IDS["bos"], *question, 50, IDS["eos"]]
    return sample(tokens, [0] * (len(question) + 1) + [1, 1], png(rgb) if rgb else b"")


def collator(**kwargs) -> Collator:
    return Collator(IDS, num_image_tokens=N_IMG, to_tensor=to_tensor, **kwargs)


def expected_pixels(rgb: tuple[int, int, int]) -> torch.Tensor:
    """A solid colour after image_tensor's (x - 0.5) / 0.5 normalisation."""
    value = (torch.tensor(rgb, dtype=torch.float32) / 255 - 0.5) / 0.5
    return value.view(3, 1, 1).expand(3, SIZE, SIZE)


def test_placeholder_expands_with_no_loss():
    batch = collator()([caption()])
    assert batch["input_ids"].tolist() == [[IDS["bos"], *[IDS["image"]] * N_IMG, 30, 31, IDS["eos"]]]
    assert batch["loss_mask"].tolist() == [[0] + [0] * N_IMG + [1, 1, 1]]
    assert batch["input_ids"].dtype == torch.long and batch["loss_mask"].dtype == torch.long


def test_expand_in_the_middle_of_a_conversation():
    s = instruct(GREEN)
    tokens, mask, has_image = collator().expand(s["tokens"], s["mask"])
    assert has_image
    p = 2  # bos, user, [image]
    assert tokens[:p].tolist() == [IDS["bos"], IDS["user"]]
    assert tokens[p : p + N_IMG].tolist() == [IDS["image"]] * N_IMG
    assert tokens[p + N_IMG :].tolist() == s["tokens"][p + 1 :].tolist()
    assert mask.tolist() == [0] * (p + N_IMG) + s["mask"][p + 1 :].tolist()
    assert len(tokens) == len(mask) == len(s["tokens"]) + N_IMG - 1


def test_text_without_placeholder_is_unchanged():
    s = text(7)
    tokens, mask, has_image = collator().expand(s["tokens"], s["mask"])
    assert not has_image
    assert tokens.tolist() == s["tokens"].tolist() and mask.tolist() == s["mask"].tolist()


def test_right_padding_with_pad_id_and_no_loss():
    batch = collator()([text(3), caption(), text(12)])
    lengths = [3, 5 + N_IMG - 1, 12]
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, ids, mask, n in zip(range(3), batch["input_ids"], batch["loss_mask"], lengths, strict=True):
        assert ids[n:].tolist() == [IDS["pad"]] * (max(lengths) - n), row
        assert mask[n:].tolist() == [0] * (max(lengths) - n), row
        assert IDS["pad"] not in ids[:n].tolist()
    assert real_tokens(batch, IDS["pad"]).tolist() == lengths
    assert batch["loss_mask"][0].tolist()[:3] == [1, 1, 1]


def test_kinds():
    batch = collator()([text(), caption(), instruct(GREEN), instruct(), text()])
    assert batch["kind"].tolist() == [TEXT, CAPTION, INSTRUCT, INSTRUCT, TEXT]
    assert batch["images"].shape[0] == 2


def test_text_only_batch_has_no_images_and_needs_no_encoder():
    batch = Collator(IDS)([text(4), instruct()])
    assert "images" not in batch
    assert batch["kind"].tolist() == [TEXT, INSTRUCT]


def test_images_in_sample_order():
    batch = collator()([caption(RED), text(), instruct(GREEN), instruct(), caption(BLUE)])
    images = batch["images"]
    assert images.shape == (3, 3, SIZE, SIZE) and images.dtype == torch.float32
    for image, rgb in zip(images, [RED, GREEN, BLUE], strict=True):
        assert torch.allclose(image, expected_pixels(rgb), atol=1e-5), rgb


def test_blank_images_are_identical_grey():
    batch = collator(blank_images=True)([caption(RED), caption(BLUE), instruct(GREEN)])
    images = batch["images"]
    assert images.shape == (3, 3, SIZE, SIZE)
    assert torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])
    assert torch.allclose(images[0], expected_pixels((128, 128, 128)), atol=1e-5)
    unblank = collator()([caption(RED), caption(BLUE)])["images"]
    assert not torch.equal(unblank[0], unblank[1])


def test_blank_like_keeps_size():
    image = blank_like(decode_image(png(RED, (5, 3))))
    assert image.size == (5, 3) and image.getpixel((0, 0)) == (128, 128, 128)
    assert decode_image(png(RED, (5, 3))).getpixel((4, 2)) == RED


def test_two_placeholders_are_refused():
    s = sample([IDS["bos"], IDS["image"], 30, IDS["image"], IDS["eos"]], [0, 0, 1, 0, 1], png(RED))
    with pytest.raises(ValueError, match="2 image placeholders"):
        collator()([s])


def test_placeholder_without_image_encoder_is_refused():
    with pytest.raises(ValueError, match="1 image placeholders but the model takes 0"):
        Collator(IDS)([caption()])


def test_loader_counts_samples_and_real_tokens():
    spec = loader([text(3), caption(), text(6)], collator(), batch_size=3)
    batch = next(iter(spec.dataloader))
    assert spec.get_num_samples_in_batch(batch) == 3
    assert spec.get_num_tokens_in_batch(batch) == 3 + (5 + N_IMG - 1) + 6


def test_microbatches_carry_exactly_their_rows_images():
    ids = {"bos": 0, "eos": 1, "pad": 2, "image": 3, "user": 4, "assistant": 5}
    collate = Collator(ids, num_image_tokens=2, to_tensor=lambda imgs: torch.stack(
        [torch.full((3, 1, 1), float(img.getpixel((0, 0))[0])) for img in imgs]))
    text = {"tokens": np.array([0, 9, 9, 1], np.int32), "mask": np.ones(4, np.uint8), "image": b""}

    def caption(red: int) -> dict:
        buf = io.BytesIO()
        Image.new("RGB", (2, 2), (red, 0, 0)).save(buf, format="PNG")
        return {"tokens": np.array([0, 3, 9, 1], np.int32), "mask": np.array([0, 0, 1, 1], np.uint8),
                "image": buf.getvalue()}

    batch = collate([caption(10), text, caption(20), caption(30), text])
    parts = collate.split(batch, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [2, 2, 1]
    assert [p["images"][:, 0, 0, 0].tolist() for p in parts[:2]] == [[10.0], [20.0, 30.0]]
    assert "images" not in parts[2]
    assert parts[2]["input_ids"].shape[1] == 4  # each chunk is cut to its own longest row (here: text)
    width = batch["input_ids"].shape[1]
    padded = [torch.nn.functional.pad(p["input_ids"], (0, width - p["input_ids"].shape[1]), value=ids["pad"])
              for p in parts]
    assert torch.equal(torch.cat(padded), batch["input_ids"])


def test_best_cut_leaves_the_fewest_padded_positions():
    assert best_cut([5, 5, 5]) == 0  # no cut saves a position
    assert best_cut([2, 2, 2, 10, 10]) == 3  # 3 x 2 + 2 x 10 = 26 positions instead of 50
    assert best_cut([1, 9]) == 1
    assert best_cut([7]) == 0


def test_split_by_length_groups_short_and_long_rows_with_their_images():
    ids = {"bos": 0, "eos": 1, "pad": 2, "image": 3, "user": 4, "assistant": 5}
    collate = Collator(ids, num_image_tokens=2, to_tensor=lambda imgs: torch.stack(
        [torch.full((3, 1, 1), float(img.getpixel((0, 0))[0])) for img in imgs]))
    long_text = {"tokens": np.array([0, *[9] * 10, 1], np.int32), "mask": np.ones(12, np.uint8), "image": b""}

    def caption(red: int) -> dict:
        buf = io.BytesIO()
        Image.new("RGB", (2, 2), (red, 0, 0)).save(buf, format="PNG")
        return {"tokens": np.array([0, 3, 9, 1], np.int32), "mask": np.array([0, 0, 1, 1], np.uint8),
                "image": buf.getvalue()}

    batch = collate([caption(10), long_text, caption(20), long_text, caption(30)])
    parts = collate.split(batch, 8, by_length=True)
    assert [tuple(p["input_ids"].shape) for p in parts] == [(3, 5), (2, 12)]  # captions: 4 tokens + 1 image token
    assert parts[0]["images"][:, 0, 0, 0].tolist() == [10.0, 20.0, 30.0] and "images" not in parts[1]
    assert [tuple(p["input_ids"].shape) for p in collate.split(batch, 2, by_length=True)] == [(2, 5), (1, 5), (2, 12)]
    assert [p["input_ids"].shape[0] for p in collate.split(batch, 8)] == [5]  # off: one padded batch


def test_split_by_length_keeps_the_whole_batchs_loss_and_gradient():
    """Composer weights each microbatch's loss by its loss tokens (make_trainer's loss_per_token): the
    sum over the length groups is the whole batch's loss, and so is its gradient."""
    from vlm.model.lm import LM, lm_config, masked_lm_loss

    torch.manual_seed(0)
    lm = LM(lm_config("tiny", vocab_size=64, max_seq_len=64))
    rng = np.random.default_rng(0)
    samples = [sample([IDS["bos"], *rng.integers(20, 64, n - 2).tolist(), IDS["eos"]]) for n in (30, 5, 6, 28, 4, 7)]
    batch = collator()(samples)

    def loss_and_grad(parts):
        lm.zero_grad()
        total = sum(int(p["loss_mask"][:, 1:].sum()) for p in parts)
        loss = sum(masked_lm_loss(lm(p["input_ids"]), p["input_ids"], p["loss_mask"]) * int(p["loss_mask"][:, 1:].sum())
                   / total for p in parts)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in lm.parameters()]

    parts = collator().split(batch, 8, by_length=True)
    assert [p["input_ids"].shape[1] for p in parts] == [7, 30]
    whole, grads = loss_and_grad([batch])
    split, split_grads = loss_and_grad(parts)
    assert split == pytest.approx(whole, rel=1e-6)
    for a, b in zip(grads, split_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_local_shards_are_prepared_at_once_and_remote_ones_ahead_of_use(tmp_path):
    """Streaming's background threads poll every 7 ms while they wait for training to catch up, which
    slowed a small CPU's training steps by about a tenth; local shards need no download, so there
    they prepare the whole epoch and exit."""
    from streaming import MDSWriter

    from vlm.data.shards import COLUMNS
    from vlm.training.data import LOCAL_PREDOWNLOAD, _predownload, dataset, mixed_dataset

    for name in ("a", "b"):
        with MDSWriter(out=str(tmp_path / name / "train"), columns=COLUMNS) as out:
            for _ in range(8):
                out.write(text(5))
    assert dataset(tmp_path / "a", "train", 2, seed=0).predownload == LOCAL_PREDOWNLOAD
    assert mixed_dataset({tmp_path / "a": 1, tmp_path / "b": 1}, "train", 2, 0, 8).predownload == LOCAL_PREDOWNLOAD
    assert _predownload([tmp_path / "a", (tmp_path / "cache", "s3://bucket/shards/b")]) is None  # Streaming's default
