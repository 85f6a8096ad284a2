"""`prepare.source: files`: read the user's sources (`prepare.files`) and write them into data/raw in
the layout of the embedded world (docs/world.md), so every later stage reads one checked format.

    text.jsonl                   {"text"} per document
    captions.jsonl, images/captions/   {"image", "caption"}; the image files, renamed
    instruct.json, images/instruct/    LLaVA records {"id", "image"?, "conversations"}
    eval/tasks.json              the tasks present, with their chance levels
    eval/vqa_questions.json, vqa_annotations.json, images/vqa/   VQAv2 (a question's `image` names its file)
    eval/pope.jsonl, images/pope/   eval/text_mc.jsonl (the original ARC layout)
    sources.json                 which files were read, and what was skipped and why

Corpora are read and written one record at a time, so memory does not grow with their size; the
evaluation sets are read whole (VQAv2's val annotations are about 200 MB of JSON). A bad record
(unreadable image, missing caption or image, unsafe tar path, VQA question with fewer than ten
answers, ...) is skipped and counted; a source whose skipped share exceeds `prepare.max_bad_fraction`
fails the stage, naming the source. A missing path fails before anything is read.
"""

from __future__ import annotations

import glob
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from vlm.config import FilesConfig
from vlm.data.readers import (
    DataError,
    Skip,
    check_llava,
    csv_records,
    json_list_records,
    json_object_list,
    jsonl_records,
    mc_item,
    parquet_records,
    pope_item,
    webdataset_records,
)
from vlm.data.vqa_answers import answer_prior_accuracy

VQA_ANSWERS = 10  # VQAv2's accuracy is a mean over leaving each of ten human answers out
# The format of a file's name ending, longest endings first: `.tar.gz` is WebDataset, `.jsonl.gz`
# JSON lines (.gz and .zst text is decompressed as it is read, vlm/data/readers.py).
EXTENSIONS = ((".tar.gz", "webdataset"), (".tgz", "webdataset"), (".tar", "webdataset"),
              (".jsonl.gz", "jsonl"), (".json.gz", "jsonl"), (".jsonl.zst", "jsonl"), (".zst", "jsonl"),
              (".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"), (".csv", "csv"))
# A folder given as a caption source: its WebDataset tars. DataComp's and img2dataset's `shards/`
# keep beside each tar a Parquet file and a `_stats.json` of metadata, which hold no samples.
SHARD_FOLDER_GLOBS = ("*.tar", "*.tar.gz", "*.tgz")
IMAGE_SUFFIX = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def key_of(role: str, i: int) -> str:
    return f"prepare.files.{role}[{i}]"


# ---- before reading: every path exists ------------------------------------------------------------

def format_of(path: Path) -> str:
    """The format its name's ending says ("" if none does)."""
    name = path.name.lower()
    return next((fmt for ending, fmt in EXTENSIONS if name.endswith(ending)), "")


def _is_jsonl(path: Path) -> bool:
    """JSON lines (`.jsonl`, compressed or not) rather than one JSON document."""
    return path.name.lower().removesuffix(".gz").removesuffix(".zst").endswith(".jsonl")


def _paths(pattern: str, key: str, folder_globs: tuple[str, ...] = ()) -> list[Path]:
    """The files a path or glob names, sorted (so the output does not depend on the file system);
    a folder, for a role that takes one, stands for its files matching `folder_globs`."""
    if folder_globs and Path(pattern).is_dir():
        found = sorted({p for g in folder_globs for p in Path(pattern).glob(g) if p.is_file()})
        if not found:
            raise DataError(f"`{key}`: the folder {pattern!r} holds no {' / '.join(folder_globs)} file")
    else:
        found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not found:
        hint = " (a folder is taken only as a caption source's shards)" if Path(pattern).is_dir() else ""
        raise DataError(f"`{key}`: {pattern!r} matches no file{hint}")
    for path in found:
        try:
            path.open("rb").close()
        except OSError as e:
            raise DataError(f"`{key}`: {path} is not readable ({e.strerror})") from e
    return found


def resolve(files: FilesConfig) -> dict[str, list[Path]]:
    """{`prepare.files.<role>[i]`: its files} for every source; DataError naming the param when a
    path matches nothing, cannot be read, or an image_root is not a folder. Reads no record."""
    found = {}
    for role in ("text", "captions", "instruct", "pope", "text_mc"):
        for i, src in enumerate(getattr(files, role)):
            folder_globs = SHARD_FOLDER_GLOBS if role == "captions" else ()
            found[key_of(role, i)] = _paths(src.path, key_of(role, i) + ".path", folder_globs)
    for i, src in enumerate(files.vqa):
        found[key_of("vqa", i)] = []
        for name in ("questions", "annotations"):
            [path, *more] = _paths(getattr(src, name), f"{key_of('vqa', i)}.{name}")
            if more:
                raise DataError(f"`{key_of('vqa', i)}.{name}` must name one file, it matches {len(more) + 1}")
            found[key_of("vqa", i)].append(path)
    for role in ("captions", "instruct", "vqa", "pope"):
        for i, src in enumerate(getattr(files, role)):
            if src.image_root is not None and not Path(src.image_root).is_dir():
                raise DataError(f"`{key_of(role, i)}.image_root`: {src.image_root!r} is not a folder")
    return found


def detect_format(path: Path, fmt: str, key: str, allowed: tuple[str, ...]) -> str:
    """`fmt`, or for `auto` the format of the file's extension; DataError if the role cannot read it."""
    if fmt == "auto":
        fmt = format_of(path)
        if not fmt:
            raise DataError(f"`{key}.format`: cannot tell the format of {path} from its extension; "
                            f"set `format` to one of {', '.join(allowed)}")
    if fmt not in allowed:
        raise DataError(f"`{key}`: {path} is {fmt}, which this role does not read (it reads {', '.join(allowed)})")
    return fmt


# ---- counting what is kept and skipped ------------------------------------------------------------

class Tally:
    """Records kept and skipped of one source, with the reasons (details in parentheses dropped)."""

    def __init__(self, key: str, log: Callable[[str], None]):
        self.key, self.log = key, log
        self.kept, self.skipped = 0, 0
        self.reasons: Counter = Counter()
        self.examples: list[str] = []

    def skip(self, item: Skip) -> None:
        self.skipped += item.count
        self.reasons[re.sub(r"\s*\(.*", "", item.reason)] += item.count
        if len(self.examples) < 5:
            self.examples.append(f"{item.where}: {item.reason}")
            self.log(f"  skipped: {item.where}: {item.reason}")

    def check(self, max_bad_fraction: float) -> None:
        total = self.kept + self.skipped
        if total == 0:
            raise DataError(f"`{self.key}`: no records")
        share = self.skipped / total
        self.log(f"  {self.key}: {self.kept} kept, {self.skipped} skipped ({share:.2%})")
        if self.kept == 0 or share > max_bad_fraction:
            reasons = "; ".join(f"{n} x {r}" for r, n in self.reasons.most_common(5))
            raise DataError(
                f"`{self.key}`: {self.skipped} of {total} records are bad ({share:.1%}, more than "
                f"`prepare.max_bad_fraction` {max_bad_fraction}): {reasons}. First: {self.examples[0]}")

    def summary(self) -> dict:
        return {"kept": self.kept, "skipped": self.skipped, "reasons": dict(sorted(self.reasons.items())),
                "examples": self.examples}


# ---- writing data/raw ---------------------------------------------------------------------------

def image_suffix(data: bytes | Path) -> str:
    """The file suffix of an image's real format, after decoding it whole (a truncated file fails)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()
            fmt = img.format
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise DataError(f"image is unreadable ({e})") from e
    return IMAGE_SUFFIX.get(fmt, (fmt or "img").lower())


class Images:
    """Copies images into one folder of data/raw under sequential names. With `dedup`, a file (or
    bytes with the same `source_id`) that several records name is copied once: the index of the
    distinct sources seen (about 150 bytes each) is the only thing here that grows with the input,
    so image-caption sets, the bulk of the data, are not deduplicated."""

    def __init__(self, root: Path, folder: str, dedup: bool = True):
        self.root, self.folder, self.dedup = root, folder, dedup
        self.names: dict[Any, str] = {}
        self.count = 0
        (root / folder).mkdir(parents=True)

    def add(self, data: bytes | Path, source_id: Any = None) -> str:
        """The `root`-relative name of the image (decoded first; DataError if unreadable)."""
        if isinstance(data, Path):
            data = data.resolve()
            source_id = str(data) if source_id is None else source_id
        if self.dedup and source_id is not None and source_id in self.names:
            return self.names[source_id]
        if isinstance(data, Path) and not data.is_file():
            raise DataError(f"image {data} not found")
        name = f"{self.folder}/{self.count:08d}.{image_suffix(data)}"
        (self.root / name).write_bytes(data if isinstance(data, bytes) else data.read_bytes())
        self.count += 1
        if self.dedup and source_id is not None:
            self.names[source_id] = name
        return name


class JsonLines:
    """Records written one per line (JSONL), or as a JSON list with `as_list`; `count` so far."""

    def __init__(self, f: TextIO, as_list: bool = False):
        self.f, self.as_list, self.count = f, as_list, 0
        if as_list:
            f.write("[")

    def add(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False)
        self.f.write((("," if self.count else "") + "\n" + line) if self.as_list else line + "\n")
        self.count += 1

    def close(self) -> None:
        if self.as_list:
            self.f.write("\n]\n")


@dataclass
class Reading:
    """What `write_files` reads: the sources, their files, and a tally per source."""

    files: FilesConfig
    found: dict[str, list[Path]]
    tallies: dict[str, Tally]
    max_bad: float

    def sources(self, role: str) -> Iterator[tuple[Any, Path, Tally]]:
        """(source params, one of its files, its tally) for every file of every source of `role`;
        each source's tally is checked once its files are read."""
        for i, src in enumerate(getattr(self.files, role)):
            key = key_of(role, i)
            for path in self.found[key]:
                yield src, path, self.tallies[key]
            self.tallies[key].check(self.max_bad)


POPE_SPLITS = ("random", "popular", "adversarial")


def pope_task(src: Any, path: Path) -> str:
    """The task a POPE file is scored as: `pope_<split>`, the split given or named in the file name
    (coco_pope_adversarial.json: adversarial), else `pope`. Each split is a task of its own."""
    split = src.split or next((s for s in POPE_SPLITS if s in path.name.lower()), None)
    return f"pope_{split}" if split else "pope"


def _root(src: Any, path: Path) -> Path:
    """The folder a source's image file names are relative to: `image_root`, or the file's own."""
    return Path(src.image_root) if src.image_root else path.parent


def _records(path: Path, fmt: str, columns: list[str]) -> Iterator[tuple[str, dict] | Skip]:
    if fmt == "parquet":
        return parquet_records(path, columns)
    if fmt == "csv":
        return csv_records(path)
    return jsonl_records(path)


def _caption_records(path: Path, fmt: str, src) -> Iterator[tuple[str, dict] | Skip]:
    """(where, record) of a caption source; a WebDataset sample becomes {image: bytes, caption: str}."""
    if fmt != "webdataset":
        yield from _records(path, fmt, [src.image, src.caption])
        return
    for item in webdataset_records(path, src.caption, check_images=False):  # Images.add decodes
        if isinstance(item, Skip):
            yield item
        else:
            key, image, caption = item
            yield f"{path}: sample `{key}`", {src.image: image, src.caption: caption}


def _field(record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"no `{name}`" if value is None else f"`{name}` is not a non-empty string")
    return value


def _run(tally: Tally, items: Iterator, write: Callable[[Any], None]) -> None:
    """Feed each item to `write`; Skips, and items `write` refuses with a DataError, are counted."""
    for item in items:
        if isinstance(item, Skip):
            tally.skip(item)
            continue
        try:
            write(item)
        except DataError as e:
            tally.skip(Skip(item[0], str(e)))
            continue
        tally.kept += 1


def write_text(r: Reading, out: Path) -> None:
    with (out / "text.jsonl").open("w", encoding="utf-8") as f:
        lines = JsonLines(f)
        for src, path, tally in r.sources("text"):
            fmt = detect_format(path, src.format, tally.key, ("jsonl", "parquet"))
            _run(tally, _records(path, fmt, [src.field]),
                 lambda item, field=src.field: lines.add({"text": _field(item[1], field)}))


def _parquet_image(cell: Any) -> bytes:
    """Image bytes from a Parquet cell: raw bytes, or a struct with `bytes` (Hugging Face's Image)."""
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    if not isinstance(cell, bytes) or not cell:
        raise DataError("no image bytes")
    return cell


def write_captions(r: Reading, out: Path) -> None:
    images = Images(out, "images/captions", dedup=False)
    with (out / "captions.jsonl").open("w", encoding="utf-8") as f:
        lines = JsonLines(f)
        for src, path, tally in r.sources("captions"):
            fmt = detect_format(path, src.format, tally.key, ("webdataset", "parquet", "jsonl", "csv"))
            root = _root(src, path)

            def write(item, src=src, fmt=fmt, root=root):
                record = item[1]
                caption = _field(record, src.caption)
                if fmt == "webdataset":
                    image = record[src.image]
                elif fmt == "parquet":
                    image = _parquet_image(record.get(src.image))
                else:
                    image = root / _field(record, src.image)
                lines.add({"image": images.add(image), "caption": caption.strip()})

            _run(tally, _caption_records(path, fmt, src), write)


def write_instruct(r: Reading, out: Path) -> None:
    images = Images(out, "images/instruct")
    with (out / "instruct.json").open("w", encoding="utf-8") as f:
        convs = JsonLines(f, as_list=True)
        for src, path, tally in r.sources("instruct"):
            root = _root(src, path)

            def write(item, root=root):
                where, record = item
                check_llava(record, where)
                conv = {"id": str(record.get("id", convs.count)), "conversations": [
                    {"from": t["from"], "value": t["value"]} for t in record["conversations"]]}
                if "image" in record:
                    conv["image"] = images.add(root / record["image"])
                convs.add(conv)

            _run(tally, jsonl_records(path) if _is_jsonl(path) else json_list_records(path), write)
        convs.close()


def write_eval(r: Reading, out: Path) -> dict:
    """The evaluation sets present; returns tasks.json's content."""
    files = r.files
    ev = out / "eval"
    ev.mkdir()
    tasks = {}
    if files.vqa:
        images = Images(ev, "images/vqa")
        questions, annotations = [], []
        for i, src in enumerate(files.vqa):
            key, tally = key_of("vqa", i), r.tallies[key_of("vqa", i)]
            qpath, apath = r.found[key]
            anns = {a.get("question_id"): a for a in json_object_list(apath, "annotations")}
            for n, q in enumerate(json_object_list(qpath, "questions")):
                where = f"{qpath}: record {n}"
                try:
                    ann = anns.get(q.get("question_id"))
                    if ann is None:
                        raise DataError(f"question_id {q.get('question_id')!r} has no annotation in {apath}")
                    answers = [a.get("answer") if isinstance(a, dict) else None for a in ann.get("answers") or []]
                    if len(answers) < VQA_ANSWERS or not all(isinstance(a, str) for a in answers):
                        raise DataError(f"{len(answers)} answers; VQAv2 accuracy needs {VQA_ANSWERS} answer strings")
                    question, image_id = _field(q, "question"), q.get("image_id")
                    if not isinstance(image_id, int):
                        raise DataError(f"`image_id` must be an integer, got {image_id!r}")
                    image = images.add(Path(src.image_root) / src.image_pattern.format(image_id=image_id),
                                       source_id=(i, image_id))
                except DataError as e:
                    tally.skip(Skip(where, str(e)))
                    continue
                qid = len(questions)
                mc = ann.get("multiple_choice_answer")
                mc = mc if isinstance(mc, str) else Counter(answers).most_common(1)[0][0]
                answer_type = ann.get("answer_type") if isinstance(ann.get("answer_type"), str) else "other"
                questions.append({"question_id": qid, "image_id": qid, "image": image, "question": question})
                annotations.append({"question_id": qid, "image_id": qid, "answer_type": answer_type,
                                    "multiple_choice_answer": mc,
                                    "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)]})
                tally.kept += 1
            tally.check(r.max_bad)
        (ev / "vqa_questions.json").write_text(json.dumps({"questions": questions}, indent=1) + "\n")
        (ev / "vqa_annotations.json").write_text(json.dumps({"annotations": annotations}, indent=1) + "\n")
        tasks["vqa"] = {"kind": "vqa", "questions": "vqa_questions.json", "annotations": "vqa_annotations.json",
                        "image_dir": ".", "chance": round(answer_prior_accuracy([
                            {**a, "answers": [x["answer"] for x in a["answers"]]} for a in annotations]), 6)}
    if files.pope:
        images = Images(ev, "images/pope")
        by_task: dict[str, list] = {}
        for i, src in enumerate(files.pope):
            for path in r.found[key_of("pope", i)]:
                by_task.setdefault(pope_task(src, path), []).append((src, path, r.tallies[key_of("pope", i)]))
        for task, files_of_task in sorted(by_task.items()):
            with (ev / f"{task}.jsonl").open("w", encoding="utf-8") as f:
                lines = JsonLines(f)
                for src, path, tally in files_of_task:
                    root = _root(src, path)

                    def write(item, root=root, lines=lines):
                        it = pope_item(item[1], item[0], root)
                        lines.add({"question_id": lines.count, "image": images.add(it["image"]),
                                   "text": it["text"], "label": it["label"]})

                    _run(tally, jsonl_records(path), write)
            tasks[task] = {"kind": "pope", "file": f"{task}.jsonl", "chance": 0.5}
        for i in range(len(files.pope)):  # each source's share of bad records, once all its files are read
            r.tallies[key_of("pope", i)].check(r.max_bad)
    if files.text_mc:
        inverse_choices = []
        with (ev / "text_mc.jsonl").open("w", encoding="utf-8") as f:
            lines = JsonLines(f)
            for _, path, tally in r.sources("text_mc"):

                def write(item):
                    it = mc_item(item[1], item[0])
                    inverse_choices.append(1 / len(it["choices"]))
                    choices = [{"label": b, "text": t} for b, t in zip(it["labels"], it["choices"], strict=True)]
                    lines.add({"id": it["id"], "answerKey": it["labels"][it["answer"]],
                               "question": {"stem": it["stem"], "choices": choices}})

                # ARC as distributed: JSONL (either layout), or Parquet with Hugging Face's columns
                records = (parquet_records(path, ["id", "question", "choices", "answerKey"])
                           if format_of(path) == "parquet" else jsonl_records(path))
                _run(tally, records, write)
        tasks["text_mc"] = {"kind": "mc", "file": "text_mc.jsonl",
                            "chance": round(sum(inverse_choices) / len(inverse_choices), 6)}
    (ev / "tasks.json").write_text(json.dumps(tasks, indent=1, sort_keys=True) + "\n")
    return tasks


def write_files(files: FilesConfig, max_bad_fraction: float, out: Path,
                log: Callable[[str], None] = lambda _: None) -> dict[str, Tally]:
    """Read every source of `files` into `out` (a fresh folder); returns the per-source tallies."""
    found = resolve(files)
    r = Reading(files, found, {key: Tally(key, log) for key in found}, max_bad_fraction)
    for role, writer in (("text", write_text), ("captions", write_captions), ("instruct", write_instruct)):
        log(f"reading the {role} sources")
        writer(r, out)
    log("reading the evaluation sources")
    tasks = write_eval(r, out)
    index = {"files": asdict(files), "read": {k: [str(p) for p in v] for k, v in found.items()},
             "tasks": sorted(tasks), "sources": {k: t.summary() for k, t in r.tallies.items()}}
    (out / "sources.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return r.tallies
