"""Readers: valid inputs load; every malformed input fails with a message naming the file and line/record."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from vlm.data import readers as R
from vlm.data.readers import DataError


def _png(path: Path, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8)).save(path)
    return path


def _jsonl(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _error(func, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    return str(info.value)


# ---- text ---------------------------------------------------------------------------------------

def test_read_text_jsonl(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", {"text": "a b", "url": "x"}, "", {"text": "c"})
    assert R.read_text(path) == ["a b", "c"]


@pytest.mark.parametrize(("lines", "where", "what"), [
    ((), "", "empty corpus"),
    (({"text": "ok"}, "{not json"), ":2:", "not valid JSON"),
    (({"text": "ok"}, {"body": "no text field"}), ":2:", "no `text` field"),
    (({"text": 3},), ":1:", "must be a string"),
    (({"text": "ok"}, {"text": "ok"}, {"text": "  "}), ":3:", "is empty"),
    (([1, 2],), ":1:", "expected a JSON object"),
])
def test_read_text_errors_name_the_line(tmp_path, lines, where, what):
    path = _jsonl(tmp_path / "t.jsonl", *lines)
    message = _error(R.read_text, path)
    assert message.startswith(f"{path}{where}") and what in message


def test_read_text_missing_and_unsupported(tmp_path):
    assert _error(R.read_text, tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: file not found"
    (tmp_path / "t.csv").write_text("text\nx\n")
    assert "unsupported text format" in _error(R.read_text, tmp_path / "t.csv")


def test_read_text_zstd(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    path = tmp_path / "t.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "a"}\n{"text": "b"}\nnot json\n'))
    message = _error(R.read_text, path)
    assert message.startswith(f"{path}:3:") and "not valid JSON" in message
    path.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "a"}\n{"text": "b"}\n'))
    assert R.read_text(path) == ["a", "b"]
    path.write_bytes(b"this is not zstd")
    assert _error(R.read_text, path).startswith(f"{path}:1: cannot decode")


def test_read_text_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    path = tmp_path / "t.parquet"
    pd.DataFrame({"text": ["a", "b"], "id": [1, 2]}).to_parquet(path)
    assert R.read_text(path) == ["a", "b"]
    pd.DataFrame({"text": ["a", ""]}).to_parquet(path)
    assert _error(R.read_text, path).startswith(f"{path}: record 1: `text` is empty")
    pd.DataFrame({"body": ["a"]}).to_parquet(path)
    assert "no column `text` (columns: body)" in _error(R.read_text, path)


# ---- captions and images ------------------------------------------------------------------------

def test_read_captions(tmp_path):
    _png(tmp_path / "images" / "0.png")
    path = _jsonl(tmp_path / "captions.jsonl", {"image": "images/0.png", "caption": "one red circle."})
    assert R.read_captions(path) == [(tmp_path / "images" / "0.png", "one red circle.")]


@pytest.mark.parametrize(("record", "what"), [
    ({"image": "images/1.png"}, "no `caption` field"),
    ({"caption": "x"}, "no `image` field"),
    ({"image": "images/1.png", "caption": ""}, "`caption` is empty"),
    ({"image": "images/missing.png", "caption": "x"}, "images/missing.png not found"),
    ({"image": "images/corrupt.png", "caption": "x"}, "images/corrupt.png is unreadable"),
    ({"image": "images/truncated.png", "caption": "x"}, "images/truncated.png is unreadable"),
])
def test_read_captions_errors_name_the_line(tmp_path, record, what):
    good = _png(tmp_path / "images" / "0.png")
    _png(tmp_path / "images" / "1.png")
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "images" / "truncated.png").write_bytes(good.read_bytes()[:-30])
    path = _jsonl(tmp_path / "captions.jsonl", {"image": "images/0.png", "caption": "fine"}, record)
    message = _error(R.read_captions, path)
    assert message.startswith(f"{path}:2:") and what in message


def test_load_image_is_rgb(tmp_path):
    img = R.load_image(_png(tmp_path / "grey.png", mode="L"))
    assert (img.mode, img.size) == ("RGB", (8, 8))
    assert "not found" in _error(R.load_image, tmp_path / "missing.png")


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "CMYK"])
def test_every_image_mode_opens_as_rgb_with_its_colour(tmp_path, mode):
    red = Image.new("RGB", (6, 4), (200, 30, 30))
    source = red.convert(mode) if mode != "P" else red.quantize(4)
    if mode == "P":
        source.info["transparency"] = 3  # a palette image with a transparent entry
    path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    source.save(path)
    img = R.load_image(path)
    assert (img.mode, img.size) == ("RGB", (6, 4))
    assert img.getpixel((0, 0)) == source.convert("RGB").getpixel((0, 0))


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored sideways with orientation 6 ("rotate 90 clockwise to view") opens upright."""
    stored = Image.new("RGB", (6, 4), (0, 0, 0))
    stored.putpixel((0, 0), (255, 255, 255))  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.png", exif=exif)
    img = R.load_image(tmp_path / "sideways.png")
    assert img.size == (4, 6)
    assert img.getpixel((3, 0)) == (255, 255, 255)  # the stored top-left is now top-right


# ---- LLaVA --------------------------------------------------------------------------------------

def _turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def test_read_llava(tmp_path):
    _png(tmp_path / "images" / "0.png")
    records = [{"id": "a", "image": "images/0.png", "conversations": _turns("<image>\nwhat colour?", "red")},
               {"id": "b", "conversations": _turns("what does it eat?", "honey", "and where?", "cave")}]
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps(records))
    assert R.read_llava(path) == records


@pytest.mark.parametrize(("record", "what"), [
    ({"id": "x"}, "`conversations` must be a non-empty list"),
    ({"conversations": [{"from": "gpt", "value": "hi"}]}, "turn 0 must be from 'human'"),
    ({"conversations": _turns("q", "a") + _turns("q2", "a2")[:1] * 2}, "turn 3 must be from 'gpt'"),
    ({"conversations": _turns("q", "a", "q2")}, "the last turn is from 'human'"),
    ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}, "turn 0: record has no `value`"),
    ({"conversations": _turns("<image>\nq", "a")}, "no `image` field"),
    ({"image": "images/0.png", "conversations": _turns("q", "a")}, "no `<image>`"),
    ({"image": "images/missing.png", "conversations": _turns("<image>\nq", "a")}, "not found"),
    ({"image": "images/corrupt.png", "conversations": _turns("<image>\nq", "a")}, "is unreadable"),
])
def test_read_llava_errors_name_the_record(tmp_path, record, what):
    _png(tmp_path / "images" / "0.png")
    (tmp_path / "images" / "corrupt.png").write_bytes(b"not an image")
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps([{"id": "ok", "conversations": _turns("q", "a")}, record]))
    message = _error(R.read_llava, path)
    assert message.startswith(f"{path}: record 1:") and what in message


def test_read_llava_file_errors(tmp_path):
    path = tmp_path / "instruct.json"
    path.write_text('{"conversations": []}')
    assert "expected a JSON list" in _error(R.read_llava, path)
    path.write_text('[\n{"id": 1,}\n]')
    assert _error(R.read_llava, path).startswith(f"{path}: record 0: not valid JSON")


# ---- evaluation formats -------------------------------------------------------------------------

def _vqa(tmp_path: Path, questions: list, annotations: list) -> tuple[Path, Path]:
    q, a = tmp_path / "q.json", tmp_path / "a.json"
    q.write_text(json.dumps({"questions": questions}))
    a.write_text(json.dumps({"annotations": annotations}))
    return q, a


def _ann(qid: int, answer: str = "red") -> dict:
    answers = [{"answer": answer, "answer_id": j} for j in range(1, 11)]
    return {"question_id": qid, "image_id": 0, "answers": answers, "multiple_choice_answer": answer,
            "answer_type": "other"}


def test_read_vqa(tmp_path):
    _png(tmp_path / "images" / "000005.png")
    q, a = _vqa(tmp_path, [{"question_id": 1, "image_id": 5, "question": "what colour?"}], [_ann(1)])
    [item] = R.read_vqa(q, a, tmp_path / "images")
    assert item["answers"] == ["red"] * 10 and item["image"] == tmp_path / "images" / "000005.png"
    assert item["question"] == "what colour?" and item["answer_type"] == "other"


def test_read_vqa_errors(tmp_path):
    question = {"question_id": 1, "image_id": 5, "question": "what colour?"}
    q, a = _vqa(tmp_path, [question, {**question, "question_id": 2}], [_ann(1)])
    assert _error(R.read_vqa, q, a).startswith(f"{q}: record 1: question_id 2 has no annotation")
    q, a = _vqa(tmp_path, [question], [_ann(1), {**_ann(2), "answers": []}])
    assert _error(R.read_vqa, q, a).startswith(f"{a}: record 1: `answers` must be a non-empty list")
    q, a = _vqa(tmp_path, [question], [_ann(1)])
    assert "image" in _error(R.read_vqa, q, a, tmp_path / "images")


def test_read_pope(tmp_path):
    _png(tmp_path / "images" / "0.png")
    good = {"question_id": 0, "image": "images/0.png", "text": "is there a red circle?", "label": "yes"}
    path = _jsonl(tmp_path / "pope.jsonl", good)
    assert R.read_pope(path)[0]["image"] == tmp_path / "images" / "0.png"
    path = _jsonl(tmp_path / "pope.jsonl", good, {**good, "question_id": 1, "label": "maybe"})
    assert _error(R.read_pope, path).startswith(f"{path}:2: `label` must be 'yes' or 'no'")
    path = _jsonl(tmp_path / "pope.jsonl", good, good)
    assert _error(R.read_pope, path).startswith(f"{path}:2: duplicate question_id 0")


def test_read_mc(tmp_path):
    texts = ["honey", "fish", "nuts", "bread"]
    choices = [{"label": label, "text": t} for label, t in zip("ABCD", texts, strict=True)]
    good = {"id": "q0", "question": {"stem": "what does the zorbel eat?", "choices": choices},
            "answerKey": "C"}
    path = _jsonl(tmp_path / "mc.jsonl", good)
    assert R.read_mc(path) == [{"id": "q0", "stem": "what does the zorbel eat?", "labels": list("ABCD"),
                                "choices": texts, "answer": 2}]
    path = _jsonl(tmp_path / "mc.jsonl", good, {**good, "answerKey": "E"})
    assert _error(R.read_mc, path).startswith(f"{path}:2: answerKey 'E' is not among the labels")
    path = _jsonl(tmp_path / "mc.jsonl", {**good, "question": {"stem": "x", "choices": choices[:1]}})
    assert _error(R.read_mc, path).startswith(f"{path}:1: `question.choices` must list >= 2")


# ---- WebDataset tars ----------------------------------------------------------------------------

def _image_bytes(fmt: str, colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), colour).save(buf, format=fmt)
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_samples_pair_images_with_txt_or_json_captions(tmp_path):
    jpg, png, webp = _image_bytes("JPEG"), _image_bytes("PNG"), _image_bytes("WEBP")
    path = _tar(tmp_path / "shard-000.tar.gz", [
        ("000001.jpg", jpg), ("000001.txt", b" a red fox \n"),
        ("000002.png", png), ("000002.json", json.dumps({"text": "a cat", "url": "x"}).encode()),
        ("sub/000003.webp", webp), ("sub/000003.TXT", "caf\u00e9 sign".encode()),
    ], mode="w:gz")
    samples = list(R.iter_webdataset(path, caption_key="text"))
    assert [(k, c) for k, _, c in samples] == [("000001", "a red fox"), ("000002", "a cat"),
                                              ("sub/000003", "caf\u00e9 sign")]
    assert [img for _, img, _ in samples] == [jpg, png, webp]


def test_webdataset_streams_one_sample_at_a_time(tmp_path):
    path = _tar(tmp_path / "s.tar", [(f"{i:04d}.{ext}", _image_bytes("PNG") if ext == "png" else b"x")
                                     for i in range(3) for ext in ("png", "txt")])
    it = R.iter_webdataset(path)
    assert next(it)[0] == "0000"  # a generator: nothing after the first sample was needed yet
    assert [k for k, _, _ in it] == ["0001", "0002"]


def test_webdataset_skips_links_and_folders(tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tar:
        for name, kind in (("d", tarfile.DIRTYPE), ("d/evil.png", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd"
            tar.addfile(info)
        for name, data in (("d/1.png", _image_bytes("PNG")), ("d/1.txt", b"ok")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert [k for k, _, _ in R.iter_webdataset(path)] == ["d/1"]


@pytest.mark.parametrize(("members", "what"), [
    ([("1.txt", b"no image")], "sample `1`: no image"),
    ([("1.png", b"PNG")], "sample `1`: no caption"),
    ([("1.png", b"PNG"), ("1.json", b'{"caption": 3}')], "`caption` must be a string"),
    ([("1.png", b"PNG"), ("1.json", b'{"text": "x"}')], "record has no `caption` field"),
    ([("1.png", b"PNG"), ("1.json", b"{oops")], "its .json is not valid JSON"),
    ([("1.png", b"PNG"), ("1.txt", b"  ")], "the caption is empty"),
    ([("1.png", b"PNG"), ("1.txt", b"\xff\xfe")], "not UTF-8"),
    ([("1.png", b"not an image"), ("1.txt", b"a cat")], "image is unreadable"),
    ([], "no samples in the archive"),
])
def test_webdataset_errors_name_the_tar_and_the_sample(tmp_path, members, what):
    members = [(n, _image_bytes("PNG") if d == b"PNG" else d) for n, d in members]
    path = _tar(tmp_path / "bad.tar", members)
    message = _error(lambda p: list(R.iter_webdataset(p)), path)
    assert message.startswith(f"{path}:") and what in message


def test_webdataset_refuses_what_is_not_a_tar(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"plain text, no archive")
    assert "not a readable tar archive" in _error(lambda p: list(R.iter_webdataset(p)), tmp_path / "x.tar")
    assert "file not found" in _error(lambda p: list(R.iter_webdataset(p)), tmp_path / "missing.tar")
