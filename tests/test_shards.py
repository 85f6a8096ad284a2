"""MDS shards written by `write_shards`, read back by stock StreamingDatasets (alone and mixed)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streaming import Stream, StreamingDataset
from torch.utils.data import DataLoader

from vlm.data.batches import CAPTION, TEXT, Collator
from vlm.data.mixing import batch_counts
from vlm.data.shards import SOURCES, SPLITS, pack_text, split_indices, write_shards
from vlm.data.tokenizer import IMAGE_MARK, Codec, train_tokenizer
from vlm.data.tokens import Ragged, encode_sources
from vlm.model.vision import image_tensor, preprocess_config
from vlm.training.data import mixed_dataset
from vlm.training.shared_memory import remove_stale_segments

SEQ_LEN, VAL_FRACTION, SEED, IMAGE_TOKENS = 16, 0.2, 3, 4
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
           (128, 0, 0), (0, 128, 0), (0, 0, 128), (128, 128, 0), (0, 128, 128), (128, 0, 128)]
NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "maroon", "dark green", "navy", "olive", "teal",
         "purple"]


def texts() -> list[str]:
    shapes = ["circle", "square", "triangle", "star"]
    return [f"The {c} {s} number {i} is on the left." for i, (c, s) in enumerate(
        (c, s) for c in NAMES for s in shapes)]


def write_raw(raw: Path) -> tuple[list[tuple[str, str]], list[dict]]:
    """Tiny solid-colour PNGs in `raw`; returns (captions, LLaVA conversations) that point at them."""
    (raw / "images").mkdir(parents=True)
    captions = []
    for i, (rgb, name) in enumerate(zip(COLOURS, NAMES, strict=True)):
        Image.new("RGB", (6, 4), rgb).save(raw / "images" / f"{i}.png")
        captions.append((f"images/{i}.png", f"a {name} square"))
    convs = []
    for i in range(8):
        turns = [{"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": NAMES[i]}]
        record = {"id": str(i), "conversations": turns}
        if i % 2 == 0:
            turns[0]["value"] = f"{IMAGE_MARK}\n{turns[0]['value']}"
            record["image"] = f"images/{i}.png"
        convs.append(record)
    return captions, convs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(codec, raw dir, sources, shards dir, stats) written once for the module; read-only."""
    root = tmp_path_factory.mktemp("shards")
    codec = Codec(train_tokenizer(texts(), 300, show_progress=False))
    captions, convs = write_raw(root / "raw")
    (root / "tokens").mkdir()
    sources = encode_sources(codec, texts(), captions, convs, root / "tokens")
    stats = write_shards(sources, codec, root / "raw", root / "out", SEQ_LEN, VAL_FRACTION, SEED, IMAGE_TOKENS,
                         log=quiet)
    return codec, root / "raw", sources, root / "out", stats


def quiet(_message: str) -> None:
    pass


def private_copy(out: Path, tmp_path: Path, *names: str) -> Path:
    """A copy of some sources' shards: each StreamingDataset needs a local folder of its own."""
    dest = tmp_path / "copy"
    for name in names:
        shutil.copytree(out / name, dest / name)
    return dest


def read_all(folder: Path, split: str) -> list[dict]:
    remove_stale_segments()
    return list(StreamingDataset(local=str(folder), split=split, shuffle=False, batch_size=4))


def split_of(sources: dict, name: str) -> dict[str, np.ndarray]:
    """The split write_shards uses for `name` (seeded per source: seed + its position in SOURCES)."""
    return split_indices(len(sources[name]), VAL_FRACTION, SEED + SOURCES.index(name))


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ---- single sources -----------------------------------------------------------------------------

def test_layout_and_stats(world):
    _, _, sources, out, stats = world
    for name in SOURCES:
        for split in SPLITS:
            assert (out / name / split / "index.json").is_file()
    n_train = len(split_of(sources, "captions")["train"])
    assert stats["captions/train"]["samples"] == stats["captions/train"]["images"] == n_train
    assert stats["captions/val"]["samples"] == len(sources["captions"]) - n_train
    assert stats["instruct/train"]["samples"] + stats["instruct/val"]["samples"] == len(sources["instruct"])
    assert stats["text/train"]["mean_tokens"] == SEQ_LEN
    assert stats["text/train"]["images"] == 0


@pytest.mark.parametrize("split", SPLITS)
def test_text_rows_are_the_packed_stream(world, tmp_path, split):
    codec, _, sources, out, stats = world
    samples = read_all(private_copy(out, tmp_path, "text") / "text", split)
    expected = pack_text(sources["text"], split_of(sources, "text")[split], codec, SEQ_LEN)
    assert len(samples) == len(expected) == stats[f"text/{split}"]["samples"] > 0
    for sample, row in zip(samples, expected, strict=True):
        assert sample["tokens"].dtype == np.int32 and sample["tokens"].shape == (SEQ_LEN,)
        assert sample["tokens"].tolist() == row.tolist()
        assert sample["mask"].tolist() == [1] * SEQ_LEN
        assert sample["image"] == b""


def test_pack_text_concatenates_documents(world):
    codec, _, sources, _, _ = world
    docs = sources["text"]
    idx = np.array([0, 2, 5])
    rows = pack_text(docs, idx, codec, 7)
    stream = [t for i in idx for t in codec.document(docs[i].tolist())]
    assert rows.shape == (len(stream) // 7, 7)
    assert rows.ravel().tolist() == stream[: rows.size]
    assert pack_text(docs, np.array([], dtype=np.int64), codec, 7).shape == (0, 7)


def test_caption_samples_hold_image_and_formatted_caption(world, tmp_path):
    codec, raw, sources, out, _ = world
    samples = read_all(private_copy(out, tmp_path, "captions") / "captions", "train")
    train = split_of(sources, "captions")["train"]
    assert len(samples) == len(train)
    for sample, i in zip(samples, train, strict=True):
        tokens = sample["tokens"].tolist()
        assert tokens[:2] == [codec.ids["bos"], codec.ids["image"]] and tokens[-1] == codec.ids["eos"]
        assert sample["mask"].tolist() == [0, 0] + [1] * (len(tokens) - 2)
        assert codec.decode(tokens) == f"a {NAMES[i]} square"
        assert sample["image"] == (raw / f"images/{i}.png").read_bytes()
        pixels = png_pixels(sample["image"])
        assert pixels.shape == (4, 6, 3) and (pixels == COLOURS[i]).all()


def test_instruct_samples_keep_mask_and_optional_image(world, tmp_path):
    _, raw, sources, out, _ = world
    instruct: Ragged = sources["instruct"]
    copy = private_copy(out, tmp_path, "instruct")
    for split in SPLITS:
        samples = read_all(copy / "instruct", split)
        idx = split_of(sources, "instruct")[split]
        assert len(samples) == len(idx) > 0
        for sample, i in zip(samples, idx, strict=True):
            assert sample["tokens"].tolist() == instruct[i].tolist()
            assert sample["mask"].tolist() == instruct.mask_of(i).tolist()
            image = instruct.images[i]
            assert sample["image"] == ((raw / image).read_bytes() if image else b"")


def test_long_conversations_are_cut_at_a_turn_boundary_or_skipped_and_counted(world, tmp_path):
    """LLaVA-shaped records through the real tokenizer, with SigLIP-384's 729 tokens per image: a
    5,000-token chat is cut to its leading whole turns, one whose image sits in a dropped turn loses
    the image too, and one whose first answer alone is too long is skipped; all counted."""
    codec, raw, _, _, _ = world
    captions, convs = write_raw(tmp_path / "raw")
    long_q = "the red square number 3 is on the left " * 12  # about 100 tokens
    chat = [{"from": "human", "value": f"{IMAGE_MARK}\nWhat colour is it?"}, {"from": "gpt", "value": "red"}]
    chat += [{"from": f, "value": long_q} for _ in range(25) for f in ("human", "gpt")]
    late = [{"from": f, "value": long_q} for _ in range(10) for f in ("human", "gpt")]
    late += [{"from": "human", "value": f"{IMAGE_MARK}\nAnd this?"}, {"from": "gpt", "value": "blue"}]
    huge = [{"from": "human", "value": f"{IMAGE_MARK}\nDescribe it."}, {"from": "gpt", "value": long_q * 14}]
    convs += [{"id": "chat", "image": "images/0.png", "conversations": chat},
              {"id": "late", "image": "images/1.png", "conversations": late},
              {"id": "huge", "image": "images/2.png", "conversations": huge}]
    (tmp_path / "tokens").mkdir()
    sources = encode_sources(codec, texts(), captions, convs, tmp_path / "tokens")
    n = len(convs)
    assert len(sources["instruct"][n - 3]) > 5000
    stats = write_shards(sources, codec, tmp_path / "raw", tmp_path / "out", SEQ_LEN, VAL_FRACTION, SEED, 729,
                         log=quiet)
    fit = {k: sum(stats[f"instruct/{split}"]["fit"][k] for split in SPLITS) for k in ("cut", "skipped")}
    assert fit == {"cut": 2, "skipped": 1}
    assert sum(stats[f"instruct/{split}"]["samples"] for split in SPLITS) == n - 1
    assert "fit" not in stats["captions/train"]
    samples = {tuple(s["tokens"][:8]): s for split in SPLITS for s in read_all(tmp_path / "out" / "instruct", split)}
    by_record = [samples.get(tuple(sources["instruct"][i][:8].tolist())) for i in (n - 3, n - 2, n - 1)]
    cut_chat, cut_late, skipped = by_record
    assert skipped is None
    image_id, eos = codec.ids["image"], codec.ids["eos"]
    dropped = sum(stats[f"instruct/{split}"]["fit"]["tokens_dropped"] for split in SPLITS)
    assert dropped == sum(len(sources["instruct"][i]) for i in (n - 3, n - 2, n - 1)) - len(
        cut_chat["tokens"]) - len(cut_late["tokens"])
    for sample, source in ((cut_chat, n - 3), (cut_late, n - 2)):
        tokens, whole = sample["tokens"], sources["instruct"][source]
        assert tokens.tolist() == whole[: len(tokens)].tolist() and len(tokens) < len(whole)
        assert tokens[-1] == eos and sample["mask"][-1] == 1  # ends on a whole answer
        assert len(tokens) + int((tokens == image_id).sum()) * 728 <= 2048
        mask = sources["instruct"].mask_of(source)
        next_end = next(j + 1 for j in range(len(tokens), len(whole)) if whole[j] == eos and mask[j])
        assert next_end + int((whole[:next_end] == image_id).sum()) * 728 > 2048  # one more turn would not fit
    assert (cut_chat["tokens"] == image_id).sum() == 1
    assert cut_chat["image"] == (tmp_path / "raw/images/0.png").read_bytes()
    assert (cut_late["tokens"] == image_id).sum() == 0 and cut_late["image"] == b""


# ---- stratified mixes ---------------------------------------------------------------------------

def kinds_per_batch(samples: list[dict], batch: int) -> list[tuple[int, int]]:
    """(text samples, caption samples) of each consecutive batch."""
    assert len(samples) % batch == 0
    chunks = [samples[i : i + batch] for i in range(0, len(samples), batch)]
    return [(sum(not s["image"] for s in c), sum(bool(s["image"]) for s in c)) for c in chunks]


def test_stock_stratified_streams_give_exact_composition(world, tmp_path):
    out = world[3]
    copy = private_copy(out, tmp_path, "text", "captions")
    remove_stale_segments()
    ds = StreamingDataset(
        streams=[Stream(local=str(copy / "text"), split="train", proportion=6 / 8),
                 Stream(local=str(copy / "captions"), split="train", proportion=2 / 8)],
        batch_size=8, batching_method="stratified", epoch_size=48, shuffle=True, shuffle_seed=1,
    )
    samples = list(ds)
    assert len(samples) == 48
    assert kinds_per_batch(samples, 8) == [(6, 2)] * 6


def test_mixed_dataset_batches_have_the_requested_counts(world, tmp_path):
    codec, _, _, out, stats = world
    means = {name: stats[f"{name}/train"]["mean_tokens"] for name in ("text", "captions")}
    counts = batch_counts({"text": 0.7, "captions": 0.3}, means, 8)
    assert counts["text"] > 0 and counts["captions"] > 0 and sum(counts.values()) == 8
    copy = private_copy(out, tmp_path, "text", "captions")
    ds = mixed_dataset({copy / name: n for name, n in counts.items()}, "train", 8, SEED, 40)
    samples = list(ds)
    assert len(samples) == 40
    assert kinds_per_batch(samples, 8) == [(counts["text"], counts["captions"])] * 5

    to_tensor = lambda images: image_tensor(images, preprocess_config(8))  # noqa: E731
    collate = Collator(codec.ids, num_image_tokens=4, to_tensor=to_tensor)
    batches = list(DataLoader(ds, batch_size=8, collate_fn=collate))
    assert len(batches) == 5
    for batch in batches:
        assert (batch["kind"] == TEXT).sum() == counts["text"]
        assert (batch["kind"] == CAPTION).sum() == counts["captions"]
        assert batch["images"].shape == (counts["captions"], 3, 8, 8)


def test_mixed_dataset_leaves_out_zero_counts(world, tmp_path):
    out = world[3]
    copy = private_copy(out, tmp_path, "text", "captions")
    ds = mixed_dataset({copy / "text": 8, copy / "captions": 0}, "train", 8, SEED, 16)
    assert kinds_per_batch(list(ds), 8) == [(8, 0)] * 2


# ---- splits, determinism, errors ----------------------------------------------------------------

@pytest.mark.parametrize(("n", "val_fraction"), [(1, 0.0), (10, 0.01), (10, 0.2), (101, 0.05), (50, 0.5)])
def test_split_indices_partition(n, val_fraction):
    splits = split_indices(n, val_fraction, seed=11)
    val, train = splits["val"], splits["train"]
    assert sorted([*val.tolist(), *train.tolist()]) == list(range(n))
    assert not set(val.tolist()) & set(train.tolist())
    assert val.tolist() == sorted(val.tolist()) and train.tolist() == sorted(train.tolist())
    assert (len(val) > 0) == (val_fraction > 0)
    assert len(val) == max(round(n * val_fraction), 1 if val_fraction > 0 else 0)
    again = split_indices(n, val_fraction, seed=11)
    assert all(np.array_equal(splits[k], again[k]) for k in SPLITS)


def test_split_indices_depend_on_the_seed():
    vals = {tuple(split_indices(100, 0.1, seed)["val"].tolist()) for seed in range(5)}
    assert len(vals) > 1


def relative_files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def test_writing_twice_gives_identical_files(world, tmp_path):
    codec, raw, sources, out, _ = world
    write_shards(sources, codec, raw, tmp_path / "again", SEQ_LEN, VAL_FRACTION, SEED, IMAGE_TOKENS, log=quiet)
    files = relative_files(out)
    assert len(files) == len(SOURCES) * len(SPLITS) * 2  # index.json + one shard each
    assert files == relative_files(tmp_path / "again")
    for f in files:
        assert (out / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f


def test_too_little_text_for_one_row_is_a_clear_error(world, tmp_path):
    codec, raw, sources, _, _ = world
    small = {**sources, "text": Ragged.from_lists([codec.encode("a red star")])}
    with pytest.raises(ValueError, match=r"source `text`: the train split is empty.*seq_len 64"):
        write_shards(small, codec, raw, tmp_path / "out", 64, 0.0, SEED, IMAGE_TOKENS, log=quiet)


def test_val_split_is_never_silently_empty(world, tmp_path):
    """val_fraction > 0 promises a validation split: held-out text shorter than one row must be an error.

    Otherwise the stage writes a text/val dataset with no samples, and the first StreamingDataset
    over it (text-pretrain's validation loader) fails with Streaming's "Stream contains no samples".
    """
    codec, raw, sources, _, _ = world
    seq_len = 64
    n_docs = len(sources["text"])
    val_tokens = sum(len(sources["text"][i]) + 2 for i in split_indices(n_docs, 0.02, SEED)["val"])
    assert 0 < val_tokens < seq_len  # one held-out document, shorter than a row
    try:
        stats = write_shards(sources, codec, raw, tmp_path / "out", seq_len, 0.02, SEED, IMAGE_TOKENS, log=quiet)
    except ValueError as e:
        assert "val" in str(e)
        return
    assert stats["text/val"]["samples"] > 0, "text/val was written with 0 samples and no error"


def test_upload_copies_every_split_under_the_remote_and_the_key_names_the_content(world, tmp_path):
    """`shard.remote` as a folder (Streaming's uploader takes URLs and folders alike); the content key
    of the copy is the original's, and any changed index changes it."""
    from pipeline.paths import shards_key
    from vlm.data.shards import upload_shards

    _, _, _, out, _ = world
    remote = tmp_path / "remote"
    count = upload_shards(out, f"{remote}/{shards_key(out)}", log=quiet)
    copy = remote / shards_key(out)
    assert relative_files(copy) == [p for p in relative_files(out) if p.name != "stats.json"]
    assert count == len(relative_files(copy))
    assert all((copy / p).read_bytes() == (out / p).read_bytes() for p in relative_files(copy))
    assert shards_key(copy) == shards_key(out)
    (copy / "text/val/index.json").write_text("{}")
    assert shards_key(copy) != shards_key(out)
