"""Read and validate the input formats of design.md "Real data" before any expensive work.

Two ways to read. The lenient readers (`jsonl_records`, `json_list_records`, `csv_records`,
`parquet_records`, `webdataset_records`) iterate one record at a time and yield a `Skip` for a bad
record instead of stopping; `prepare` counts those (vlm/data/ingest.py). The strict readers (`read_*`,
`iter_webdataset`), for the checked files in data/raw, raise DataError at the first problem.
Either way a message starts with `path:line:` (line-based files) or `path: record N:` (JSON lists
and table rows, N counted from 0) and says what is wrong. Image paths inside a file are relative
to that file's folder.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from vlm.io import open_rgb


class DataError(ValueError):
    """An input file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Skip:
    """A bad record a lenient reader passed over: where it is, what is wrong, and how many records
    it stands for (all the rows of a table that lacks a column, say)."""

    where: str
    reason: str
    count: int = 1


def strict(items: Iterable) -> Iterator:
    """The items of a lenient reader, raising DataError at the first Skip."""
    for item in items:
        if isinstance(item, Skip):
            raise DataError(f"{item.where}: {item.reason}")
        yield item


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")


def _open_text(path: Path) -> TextIO:
    """A text file, decompressed as it is read when its name ends in .zst or .gz."""
    if path.name.endswith(".zst"):
        import zstandard  # only needed for compressed corpora

        stream = zstandard.ZstdDecompressor().stream_reader(path.open("rb"))
        return io.TextIOWrapper(stream, encoding="utf-8")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def jsonl_records(path: Path) -> Iterator[tuple[str, dict] | Skip]:
    """(`path:line`, record) for every non-blank line that is a JSON object; a Skip for any other.
    Undecodable bytes or a corrupt zstd frame end the file with one Skip for the rest."""
    _require_file(path)
    with _open_text(path) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    yield Skip(where, f"not valid JSON ({e.msg})")
                    continue
                if isinstance(record, dict):
                    yield where, record
                else:
                    yield Skip(where, f"expected a JSON object, got {type(record).__name__}")
        except Exception as e:  # undecodable bytes or a corrupt zstd frame: the rest is unreadable
            yield Skip(f"{path}:{lineno + 1}", f"cannot decode ({e}); the rest of the file is skipped")


def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    return strict(jsonl_records(path))


def json_list_records(path: Path) -> Iterator[tuple[str, dict] | Skip]:
    """(`path: record N`, record) of a JSON list of objects, parsed one record at a time from 1 MiB
    reads (LLaVA's 665k conversations are never in memory at once). A syntax error ends the file
    (what follows cannot be resynchronised) with a DataError."""
    _require_file(path)
    decoder = json.JSONDecoder()
    with _open_text(path) as f:
        buf, pos = "", 0

        def more() -> bool:  # drop what was parsed, read the next chunk
            nonlocal buf, pos
            chunk = f.read(1 << 20)
            buf, pos = buf[pos:] + chunk, 0
            return bool(chunk)

        def next_char(skip: str) -> str:  # the next character that is not whitespace or in `skip`
            nonlocal pos
            while True:
                while pos < len(buf) and (buf[pos].isspace() or buf[pos] in skip):
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not more():
                    return ""

        try:
            if next_char("") != "[":
                raise DataError(f"{path}: expected a JSON list of records")
            pos += 1
            n = 0
            while (c := next_char(",")) != "]":
                if c == "":
                    raise DataError(f"{path}: record {n}: the list is not closed (truncated file?)")
                while True:
                    try:
                        record, pos = decoder.raw_decode(buf, pos)
                        break
                    except json.JSONDecodeError as e:
                        if not more():
                            raise DataError(f"{path}: record {n}: not valid JSON ({e.msg})") from e
                where = f"{path}: record {n}"
                n += 1
                yield (where, record) if isinstance(record, dict) else Skip(
                    where, f"expected a JSON object, got {type(record).__name__}")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from e
        except (OSError, EOFError) as e:  # a corrupt or truncated .gz / .zst
            raise DataError(f"{path}: cannot decompress ({e})") from e


def _load_json(path: Path) -> Any:
    _require_file(path)
    try:
        with _open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot decompress ({e})") from e


def _string(record: dict, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in record:
        raise DataError(f"{where}: record has no `{key}` field")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: `{key}` must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: `{key}` is empty")
    return value


def _int(record: dict, key: str, where: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: `{key}` must be an integer, got {value!r}")
    return value


def _decode(source: Path | io.BytesIO, what: str) -> None:
    """Decode the whole image so a truncated or corrupt file fails here, not mid-training."""
    try:
        with Image.open(source) as img:
            img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise DataError(f"{what} is unreadable ({e})") from e


def _check_image(path: Path, where: str) -> None:
    if not path.is_file():
        raise DataError(f"{where}: image {path} not found")
    _decode(path, f"{where}: image {path}")


def load_image(path: str | Path) -> Image.Image:
    """An image as upright RGB (decoded in memory, file closed; vlm.io.open_rgb)."""
    path = Path(path)
    try:
        return open_rgb(path)
    except FileNotFoundError as e:
        raise DataError(f"{path}: image not found") from e
    except Exception as e:
        raise DataError(f"{path}: image is unreadable ({e})") from e


# ---- text ---------------------------------------------------------------------------------------

def iter_text(path: str | Path, field: str = "text") -> Iterator[str]:
    """Documents of a JSONL (optionally `.zst`) or Parquet corpus with a `text` field, as DCLM
    ships, one at a time."""
    path = Path(path)
    _require_file(path)
    if path.suffix == ".parquet":
        records = parquet_records(path, [field])
    elif path.name.endswith((".jsonl", ".jsonl.zst")):
        records = jsonl_records(path)
    else:
        raise DataError(f"{path}: unsupported text format (expected .jsonl, .jsonl.zst or .parquet)")
    n = 0
    for where, record in strict(records):
        yield _string(record, field, where)
        n += 1
    if n == 0:
        raise DataError(f"{path}: empty corpus (no records)")


def read_text(path: str | Path) -> list[str]:
    """`iter_text` as a list (small corpora and tests)."""
    return list(iter_text(path))


# ---- image-caption pairs and instructions --------------------------------------------------------

def iter_captions(path: str | Path, check_images: bool = True) -> Iterator[tuple[Path, str]]:
    """(image path, caption) pairs of a folder plus a captions JSONL (`image`, `caption`), one at a time."""
    path = Path(path)
    n = 0
    for where, record in _jsonl(path):
        image = path.parent / _string(record, "image", where)
        caption = _string(record, "caption", where)
        if check_images:
            _check_image(image, where)
        n += 1
        yield image, caption
    if n == 0:
        raise DataError(f"{path}: no image-caption records")


def read_captions(path: str | Path, check_images: bool = True) -> list[tuple[Path, str]]:
    return list(iter_captions(path, check_images))


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _webdataset_sample(files: dict[str, bytes], caption_key: str) -> tuple[bytes, str]:
    """(image bytes, caption) of one WebDataset sample's files; DataError says what is wrong."""
    images = [ext for ext in IMAGE_EXTENSIONS if ext in files]
    if not images:
        raise DataError(f"no image ({', '.join(IMAGE_EXTENSIONS)}); files: {', '.join(sorted(files)) or 'none'}")
    if "txt" in files:
        try:
            caption = files["txt"].decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise DataError("its .txt caption is not UTF-8 text") from e
    elif "json" in files:
        try:
            record = json.loads(files["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"its .json is not valid JSON ({e})") from e
        if not isinstance(record, dict):
            raise DataError("its .json is not an object")
        caption = _string(record, caption_key, "its .json")
    else:
        raise DataError(f"no caption (a .txt, or a .json with `{caption_key}`)")
    if not caption:
        raise DataError("the caption is empty")
    return files[images[0]], caption


def _safe_member_name(name: str) -> bool:
    """A tar member path that stays inside the archive's root (no absolute path, no `..`)."""
    return not name.startswith(("/", "\\")) and ".." not in name.replace("\\", "/").split("/")


def _tar_samples(tar) -> Iterator[tuple[str, dict[str, bytes]] | Skip]:
    """(key, {extension: bytes}) of each run of consecutive regular files sharing a key; a Skip for
    a member with an absolute or `..` path. Links and folders are passed over."""
    key, files = None, {}
    for member in tar:
        if not member.isfile():
            continue
        if not _safe_member_name(member.name):
            yield Skip(f"{tar.name}: member `{member.name}`", "absolute or `..` path")
            continue
        folder, _, name = member.name.rpartition("/")
        stem, _, ext = name.partition(".")
        member_key = f"{folder}/{stem}" if folder else stem
        if key is not None and member_key != key:
            yield key, files
            files = {}
        key = member_key
        files[ext.lower()] = tar.extractfile(member).read()
    if key is not None:
        yield key, files


def webdataset_records(path: str | Path, caption_key: str = "caption",
                       check_images: bool = True) -> Iterator[tuple[str, bytes, str] | Skip]:
    """(sample key, image file bytes, caption) of every sample of a WebDataset tar (plain or
    compressed), as DataComp and img2dataset write them: the files of a sample are consecutive and
    share the key before the first dot of their name (`000123.jpg`, `000123.txt` / `000123.json`).

    The tar is streamed, one sample in memory at a time, and never extracted. A bad sample (no
    image, no caption, an unreadable image, an unsafe member path) is a Skip; so is an empty
    archive, and a truncated one ends with a Skip after its last whole sample.
    """
    import tarfile  # only needed for WebDataset sources

    path = Path(path)
    _require_file(path)
    n = 0
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for item in _tar_samples(tar):
                if isinstance(item, Skip):
                    yield item
                    continue
                key, files = item
                n += 1
                try:
                    image, caption = _webdataset_sample(files, caption_key)
                    if check_images:
                        _decode(io.BytesIO(image), "image")
                except DataError as e:
                    yield Skip(f"{path}: sample `{key}`", str(e))
                    continue
                yield key, image, caption
    except (tarfile.TarError, OSError, EOFError) as e:
        what = "not a readable tar archive" if n == 0 else f"the archive is truncated or corrupt after {n} samples"
        yield Skip(str(path), f"{what} ({e})")
        return
    if n == 0:
        yield Skip(str(path), "no samples in the archive")


def iter_webdataset(path: str | Path, caption_key: str = "caption",
                    check_images: bool = True) -> Iterator[tuple[str, bytes, str]]:
    """`webdataset_records`, raising DataError at the first bad sample."""
    return strict(webdataset_records(path, caption_key, check_images))


def parquet_records(path: Path, columns: list[str]) -> Iterator[tuple[str, dict] | Skip]:
    """(`path: record N`, {column: value}) of every row of a Parquet file, read a batch of rows at a
    time. A file that lacks one of `columns` is one Skip counting all its rows."""
    import pyarrow.parquet as pq  # pandas' Parquet engine

    _require_file(path)
    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: cannot read Parquet ({e})") from e
    names = table.schema_arrow.names
    if missing := [c for c in columns if c not in names]:
        yield Skip(str(path), f"no column {', '.join(f'`{c}`' for c in missing)} (columns: {', '.join(names)})",
                   count=table.metadata.num_rows)
        return
    n = 0
    for batch in table.iter_batches(batch_size=1024, columns=columns):
        for row in batch.to_pylist():
            yield f"{path}: record {n}", row
            n += 1


def csv_records(path: Path) -> Iterator[tuple[str, dict] | Skip]:
    """(`path:line`, {column: value}) of every row of a CSV file with a header row."""
    import csv

    _require_file(path)
    with path.open(encoding="utf-8", newline="") as f:
        try:
            reader = csv.DictReader(f)
            for row in reader:
                yield f"{path}:{reader.line_num}", row
        except (csv.Error, UnicodeDecodeError) as e:
            yield Skip(f"{path}", f"cannot read CSV ({e}); the rest of the file is skipped")


def iter_llava(path: str | Path, check_images: bool = True) -> Iterator[dict]:
    """LLaVA conversations, a JSON list of {id, conversations, image?}, each checked and returned as
    it is, one at a time."""
    path = Path(path)
    n = 0
    for where, record in strict(json_list_records(path)):
        check_llava(record, where)
        if "image" in record and check_images:
            _check_image(path.parent / record["image"], where)
        n += 1
        yield record
    if n == 0:
        raise DataError(f"{path}: no conversations")


def read_llava(path: str | Path, check_images: bool = True) -> list[dict]:
    return list(iter_llava(path, check_images))


def check_llava(record: dict, where: str) -> None:
    """A LLaVA record's turns alternate human/gpt and end with gpt; an `image` goes with exactly one
    `<image>` mark in the conversation and vice versa."""
    _check_turns(record.get("conversations"), where)
    marks = sum(turn["value"].count("<image>") for turn in record["conversations"])
    if marks and "image" not in record:
        raise DataError(f"{where}: `<image>` in the conversation but no `image` field")
    if "image" in record:
        _string(record, "image", where)
        if not marks:
            raise DataError(f"{where}: has an `image` but no `<image>` in the conversation")
    if marks > 1:
        raise DataError(f"{where}: {marks} `<image>` marks; a conversation holds one image")


def _check_turns(turns: Any, where: str) -> None:
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: `conversations` must be a non-empty list of turns")
    for j, turn in enumerate(turns):
        expected = "human" if j % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected:
            got = turn.get("from") if isinstance(turn, dict) else turn
            raise DataError(f"{where}: turn {j} must be from {expected!r} (turns alternate), got {got!r}")
        _string(turn, "value", f"{where}: turn {j}", allow_empty=True)
    if len(turns) % 2:
        raise DataError(f"{where}: the last turn is from 'human'; every question needs a 'gpt' answer")


# ---- evaluation ---------------------------------------------------------------------------------

def read_vqa(questions_path: str | Path, annotations_path: str | Path, image_dir: str | Path | None = None,
             image_name: str = "{image_id:06d}.png") -> list[dict]:
    """VQAv2 questions joined with their annotations.

    Each item: question_id, image_id, question, answers (the annotators' answers), answer_type,
    multiple_choice_answer, and image (a checked Path under `image_dir`, or None without one).
    """
    questions_path, annotations_path = Path(questions_path), Path(annotations_path)
    questions = json_object_list(questions_path, "questions")
    annotations: dict[int, dict] = {}
    for i, ann in enumerate(json_object_list(annotations_path, "annotations")):
        where = f"{annotations_path}: record {i}"
        qid = _int(ann, "question_id", where)
        answers = ann.get("answers")
        if not isinstance(answers, list) or not answers:
            raise DataError(f"{where}: `answers` must be a non-empty list")
        texts = []
        for j, answer in enumerate(answers):
            if not isinstance(answer, dict):
                raise DataError(f"{where}: answer {j} must be an object with an `answer` string")
            texts.append(_string(answer, "answer", f"{where}: answer {j}"))
        if qid in annotations:
            raise DataError(f"{where}: duplicate annotation for question_id {qid}")
        annotations[qid] = {"answers": texts, "answer_type": ann.get("answer_type", "other"),
                            "multiple_choice_answer": ann.get("multiple_choice_answer", texts[0])}
    items, seen = [], set()
    for i, q in enumerate(questions):
        where = f"{questions_path}: record {i}"
        qid, image_id = _int(q, "question_id", where), _int(q, "image_id", where)
        if qid in seen:
            raise DataError(f"{where}: duplicate question_id {qid}")
        seen.add(qid)
        if qid not in annotations:
            raise DataError(f"{where}: question_id {qid} has no annotation in {annotations_path}")
        image = None
        if image_dir is not None:  # a question's own `image` (relative to image_dir) wins over the pattern
            name = _string(q, "image", where) if "image" in q else image_name.format(image_id=image_id)
            image = Path(image_dir) / name
            _check_image(image, where)
        items.append({"question_id": qid, "image_id": image_id, "question": _string(q, "question", where),
                      "image": image, **annotations[qid]})
    if extra := sorted(set(annotations) - seen):
        raise DataError(f"{annotations_path}: annotations for unknown question_ids {extra[:5]}")
    return items


def json_object_list(path: Path, key: str) -> list[dict]:
    """The list of objects under `key` in a JSON file (VQAv2's `questions` / `annotations`)."""
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: expected an object with a `{key}` list")
    if not data[key]:
        raise DataError(f"{path}: `{key}` is empty")
    for i, record in enumerate(data[key]):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {i}: expected a JSON object, got {type(record).__name__}")
    return data[key]


def read_pope(path: str | Path, check_images: bool = True) -> list[dict]:
    """POPE-style yes/no questions: question_id, image (Path), text and label ("yes" or "no")."""
    path = Path(path)
    items, seen = [], set()
    for where, record in _jsonl(path):
        item = pope_item(record, where, path.parent)
        item["question_id"] = _int(record, "question_id", where)
        if item["question_id"] in seen:
            raise DataError(f"{where}: duplicate question_id {item['question_id']}")
        seen.add(item["question_id"])
        if check_images:
            _check_image(item["image"], where)
        items.append(item)
    if not items:
        raise DataError(f"{path}: no questions")
    return items


def pope_item(record: dict, where: str, image_root: Path) -> dict:
    """{image (Path under image_root), text, label} of a POPE record (the label's case ignored)."""
    image = image_root / _string(record, "image", where)
    label = _string(record, "label", where).strip().lower()
    if label not in ("yes", "no"):
        raise DataError(f"{where}: `label` must be 'yes' or 'no', got {record['label']!r}")
    return {"image": image, "text": _string(record, "text", where), "label": label}


def read_mc(path: str | Path, image: bool = False) -> list[dict]:
    """ARC-style multiple choice JSONL, as {id, stem, labels, choices (texts), answer (index)}. With
    `image` every record also names an image (relative to the file's folder, added as a Path): a
    question about it in caption form, the stem the start of a caption, the choices its continuations."""
    path = Path(path)
    items = []
    for where, record in _jsonl(path):
        item = mc_item(record, where)
        if image:
            item["image"] = path.parent / _string(record, "image", where)
            _check_image(item["image"], where)
        items.append(item)
    if not items:
        raise DataError(f"{path}: no questions")
    return items


def mc_item(record: dict, where: str) -> dict:
    """{id, stem, labels, choices, answer} of an ARC record, in either layout: the original
    {question: {stem, choices: [{label, text}]}, answerKey} or Hugging Face's ai2_arc
    {question: str, choices: {text: [...], label: [...]}, answerKey}."""
    qid = record.get("id")
    if not isinstance(qid, str | int) or isinstance(qid, bool):
        raise DataError(f"{where}: `id` must be a string, got {qid!r}")
    question = record.get("question")
    if isinstance(question, dict):  # the original ARC layout
        stem = _string(question, "stem", where)
        choices = question.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, dict) for c in choices):
            raise DataError(f"{where}: `question.choices` must list >= 2 {{label, text}} objects")
        labels = [_string(c, "label", where) for c in choices]
        texts = [_string(c, "text", where) for c in choices]
    elif isinstance(question, str):  # Hugging Face's ai2_arc layout
        stem = _string(record, "question", where)
        choices = record.get("choices")
        if not isinstance(choices, dict) or not all(isinstance(choices.get(k), list) for k in ("text", "label")):
            raise DataError(f"{where}: `choices` must be an object with `text` and `label` lists")
        labels, texts = choices["label"], choices["text"]
        if len(labels) != len(texts) or len(labels) < 2:
            raise DataError(f"{where}: `choices` must hold >= 2 texts and as many labels")
        if not all(isinstance(x, str) and x.strip() for x in labels + texts):
            raise DataError(f"{where}: every choice `text` and `label` must be a non-empty string")
    else:
        raise DataError(f"{where}: `question` must be a string or an object with `stem` and `choices`")
    if len(set(labels)) != len(labels):
        raise DataError(f"{where}: duplicate choice labels {labels}")
    key = _string(record, "answerKey", where)
    if key not in labels:
        raise DataError(f"{where}: answerKey {key!r} is not among the labels {labels}")
    return {"id": str(qid), "stem": stem, "labels": labels, "choices": texts, "answer": labels.index(key)}


# ---- evaluation sets ----------------------------------------------------------------------------

def load_tasks(eval_dir: str | Path) -> dict:
    """The evaluation sets named in `eval_dir`/tasks.json (as prepare writes them), read and checked:
    {name: {"kind", "chance", "items"}}."""
    eval_dir = Path(eval_dir)
    spec = json.loads((eval_dir / "tasks.json").read_text())
    tasks = {}
    for name, t in spec.items():
        if t["kind"] == "vqa":
            items = read_vqa(eval_dir / t["questions"], eval_dir / t["annotations"], eval_dir / t["image_dir"])
        elif t["kind"] == "pope":
            items = read_pope(eval_dir / t["file"])
        elif t["kind"] == "mc":
            items = read_mc(eval_dir / t["file"])
        elif t["kind"] == "caption":
            items = read_mc(eval_dir / t["file"], image=True)
        else:
            raise DataError(f"{eval_dir / 'tasks.json'}: task {name!r} has unknown kind {t['kind']!r}")
        tasks[name] = {"kind": t["kind"], "chance": float(t["chance"]), "items": items}
    return tasks
