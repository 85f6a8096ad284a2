"""Read and validate the input formats of design.md "Real data" before any expensive work.

Every problem raises DataError whose message starts with `path:line:` (line-based files) or
`path: record N:` (JSON lists and Parquet rows, N counted from 0) and says what is wrong.
Image paths inside a file are relative to that file's folder.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from vlm.io import open_rgb


class DataError(ValueError):
    """An input file is missing, malformed or inconsistent."""


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")


def _open_text(path: Path) -> TextIO:
    if path.name.endswith(".zst"):
        import zstandard  # only needed for compressed corpora

        stream = zstandard.ZstdDecompressor().stream_reader(path.open("rb"))
        return io.TextIOWrapper(stream, encoding="utf-8")
    return path.open(encoding="utf-8")


def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """(`path:line`, record) for every non-blank line, each checked to be a JSON object."""
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
                    raise DataError(f"{where}: not valid JSON ({e.msg})") from e
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
                yield where, record
        except DataError:
            raise
        except Exception as e:  # undecodable bytes or a corrupt zstd frame
            raise DataError(f"{path}:{lineno + 1}: cannot decode ({e})") from e


def _load_json(path: Path) -> Any:
    _require_file(path)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e


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

def read_text(path: str | Path) -> list[str]:
    """Documents of a JSONL (optionally `.zst`) or Parquet corpus with a `text` field, as DCLM ships."""
    path = Path(path)
    _require_file(path)
    if path.suffix == ".parquet":
        texts = _parquet_texts(path)
    elif path.name.endswith((".jsonl", ".jsonl.zst")):
        texts = [_string(record, "text", where) for where, record in _jsonl(path)]
    else:
        raise DataError(f"{path}: unsupported text format (expected .jsonl, .jsonl.zst or .parquet)")
    if not texts:
        raise DataError(f"{path}: empty corpus (no records)")
    return texts


def _parquet_texts(path: Path) -> list[str]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except ImportError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read Parquet ({e})") from e
    if "text" not in frame.columns:
        raise DataError(f"{path}: no `text` column (columns: {', '.join(map(str, frame.columns))})")
    return [_string({"text": t}, "text", f"{path}: record {i}") for i, t in enumerate(frame["text"].tolist())]


# ---- image-caption pairs and instructions --------------------------------------------------------

def read_captions(path: str | Path, check_images: bool = True) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of a folder plus a captions JSONL (`image`, `caption`)."""
    path = Path(path)
    pairs = []
    for where, record in _jsonl(path):
        image = path.parent / _string(record, "image", where)
        caption = _string(record, "caption", where)
        if check_images:
            _check_image(image, where)
        pairs.append((image, caption))
    if not pairs:
        raise DataError(f"{path}: no image-caption records")
    return pairs


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _webdataset_sample(key: str, files: dict[str, bytes], caption_key: str, where: str) -> tuple[str, bytes, str]:
    images = [ext for ext in IMAGE_EXTENSIONS if ext in files]
    if not images:
        raise DataError(f"{where}: sample `{key}` has no image ({', '.join(IMAGE_EXTENSIONS)}); files: "
                        f"{', '.join(sorted(files)) or 'none'}")
    if "txt" in files:
        try:
            caption = files["txt"].decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: sample `{key}`: its .txt caption is not UTF-8 text") from e
    elif "json" in files:
        try:
            record = json.loads(files["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{where}: sample `{key}`: its .json is not valid JSON ({e})") from e
        if not isinstance(record, dict):
            raise DataError(f"{where}: sample `{key}`: its .json is not an object")
        caption = _string(record, caption_key, f"{where}: sample `{key}`")
    else:
        raise DataError(f"{where}: sample `{key}` has no caption (a .txt, or a .json with `{caption_key}`)")
    if not caption:
        raise DataError(f"{where}: sample `{key}`: the caption is empty")
    return key, files[images[0]], caption


def _tar_samples(tar) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each run of consecutive regular files sharing a key."""
    key, files = None, {}
    for member in tar:
        if not member.isfile():
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


def iter_webdataset(path: str | Path, caption_key: str = "caption",
                    check_images: bool = True) -> Iterator[tuple[str, bytes, str]]:
    """(sample key, image file bytes, caption) of every sample of a WebDataset tar (plain or
    compressed), as DataComp and img2dataset write them: the files of a sample are consecutive and
    share the key before the first dot of their name (`000123.jpg`, `000123.txt` / `000123.json`).

    The tar is streamed, one sample in memory at a time, and never extracted; members that are not
    regular files (links, folders) are skipped.
    """
    import tarfile  # only needed for WebDataset sources

    path = Path(path)
    _require_file(path)
    n = 0
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for key, files in _tar_samples(tar):
                sample = _webdataset_sample(key, files, caption_key, str(path))
                if check_images:
                    _decode(io.BytesIO(sample[1]), f"{path}: sample `{key}`: image")
                n += 1
                yield sample
    except tarfile.TarError as e:
        raise DataError(f"{path}: not a readable tar archive ({e})") from e
    if n == 0:
        raise DataError(f"{path}: no samples in the archive")


def read_llava(path: str | Path, check_images: bool = True) -> list[dict]:
    """LLaVA conversations: a JSON list of {id, conversations, image?}, returned as they are."""
    path = Path(path)
    records = _load_json(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of conversations, got {type(records).__name__}")
    if not records:
        raise DataError(f"{path}: no conversations")
    for i, record in enumerate(records):
        where = f"{path}: record {i}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        _check_turns(record.get("conversations"), where)
        tagged = any("<image>" in turn["value"] for turn in record["conversations"])
        if tagged and "image" not in record:
            raise DataError(f"{where}: `<image>` in the conversation but no `image` field")
        if "image" in record:
            if not tagged:
                raise DataError(f"{where}: has an `image` but no `<image>` in the conversation")
            if check_images:
                _check_image(path.parent / _string(record, "image", where), where)
    return records


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
    questions = _records(questions_path, "questions")
    annotations: dict[int, dict] = {}
    for i, ann in enumerate(_records(annotations_path, "annotations")):
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
        if image_dir is not None:
            image = Path(image_dir) / image_name.format(image_id=image_id)
            _check_image(image, where)
        items.append({"question_id": qid, "image_id": image_id, "question": _string(q, "question", where),
                      "image": image, **annotations[qid]})
    if extra := sorted(set(annotations) - seen):
        raise DataError(f"{annotations_path}: annotations for unknown question_ids {extra[:5]}")
    return items


def _records(path: Path, key: str) -> list[dict]:
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
        qid = _int(record, "question_id", where)
        if qid in seen:
            raise DataError(f"{where}: duplicate question_id {qid}")
        seen.add(qid)
        image = path.parent / _string(record, "image", where)
        label = _string(record, "label", where)
        if label not in ("yes", "no"):
            raise DataError(f"{where}: `label` must be 'yes' or 'no', got {label!r}")
        if check_images:
            _check_image(image, where)
        text = _string(record, "text", where)
        items.append({"question_id": qid, "image": image, "text": text, "label": label})
    if not items:
        raise DataError(f"{path}: no questions")
    return items


def read_mc(path: str | Path) -> list[dict]:
    """ARC-style multiple choice JSONL, as {id, stem, labels, choices (texts), answer (index)}."""
    path = Path(path)
    items = []
    for where, record in _jsonl(path):
        qid = record.get("id")
        if not isinstance(qid, str | int) or isinstance(qid, bool):
            raise DataError(f"{where}: `id` must be a string, got {qid!r}")
        question = record.get("question")
        if not isinstance(question, dict):
            raise DataError(f"{where}: `question` must be an object with `stem` and `choices`")
        stem = _string(question, "stem", where)
        choices = question.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, dict) for c in choices):
            raise DataError(f"{where}: `question.choices` must list >= 2 {{label, text}} objects")
        labels = [_string(c, "label", where) for c in choices]
        texts = [_string(c, "text", where) for c in choices]
        if len(set(labels)) != len(labels):
            raise DataError(f"{where}: duplicate choice labels {labels}")
        key = _string(record, "answerKey", where)
        if key not in labels:
            raise DataError(f"{where}: answerKey {key!r} is not among the labels {labels}")
        items.append({"id": str(qid), "stem": stem, "labels": labels, "choices": texts,
                      "answer": labels.index(key)})
    if not items:
        raise DataError(f"{path}: no questions")
    return items
