"""A user's own files in every format `prepare.source: files` reads, made from a synthetic world.

`write_every_format` spreads one world's products over all the formats (so what `prepare` writes
back can be compared with the world itself); `write_as_distributed` (pipeline/rehearsal.py) writes the same world
whole in the compressed and columnar forms the real sets come in (gzip, DataComp's `shards/`
folder, ARC Parquet); `write_folder_only` uses only a folder of images with a captions JSONL, LLaVA JSON and
VQAv2 files. Each returns the `prepare.files` params.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import pandas as pd
import zstandard

from pipeline.rehearsal import COCO


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def thirds(items: list) -> list[list]:
    n = len(items)
    return [items[: n // 3], items[n // 3: 2 * n // 3], items[2 * n // 3:]]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_every_format(world: Path, root: Path, base: str | None = None) -> dict:
    """Files under `root` holding `world`'s products; the params naming them, as `base` (default:
    `root` itself; "inputs/data" for a repository's own folder)."""
    base = base or str(root)
    texts = [r["text"] for r in jsonl(world / "text.jsonl")]
    a, b, c = thirds(texts)
    write_jsonl(root / "text/a.jsonl", [{"text": t, "url": "x"} for t in a])
    (root / "text/b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"content": t}) + "\n" for t in b).encode()))
    pd.DataFrame({"text": c, "id": range(len(c))}).to_parquet(root / "text/c.parquet")

    caps = jsonl(world / "captions.jsonl")
    quarter = len(caps) // 4
    tar_part, parquet_part, jsonl_part, csv_part = (caps[:quarter], caps[quarter: 2 * quarter],
                                                    caps[2 * quarter: 3 * quarter], caps[3 * quarter:])
    members = []
    for i, r in enumerate(tar_part):
        members.append((f"{i:06d}.png", (world / r["image"]).read_bytes()))
        members.append((f"{i:06d}.txt", r["caption"].encode()) if i % 2 else
                       (f"{i:06d}.json", json.dumps({"caption": r["caption"], "url": "u"}).encode()))
    write_tar(root / "captions/shard-000000.tar", members)
    pd.DataFrame({
        "jpg": [{"bytes": (world / r["image"]).read_bytes(), "path": r["image"]} for r in parquet_part],
        "txt": [r["caption"] for r in parquet_part],
    }).to_parquet(root / "captions/pairs.parquet")
    for part, folder in ((jsonl_part, "folder-jsonl"), (csv_part, "folder-csv")):
        (root / "captions" / folder / "img").mkdir(parents=True)
        for r in part:
            shutil.copy2(world / r["image"], root / "captions" / folder / "img" / Path(r["image"]).name)
    write_jsonl(root / "captions/folder-jsonl/captions.jsonl",
                [{"file": Path(r["image"]).name, "text": r["caption"]} for r in jsonl_part])
    with (root / "captions/folder-csv/captions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "caption"])
        writer.writerows([Path(r["image"]).name, r["caption"]] for r in csv_part)

    llava = root / "llava"
    shutil.copytree(world / "images", llava / "images")
    shutil.copy2(world / "instruct.json", llava / "llava.json")

    vqa = _vqa(world, root, base)
    (root / "pope/images").mkdir(parents=True)
    pope = jsonl(world / "eval/pope_adversarial.jsonl")
    for r in pope:
        shutil.copy2(world / "eval" / r["image"], root / "pope/images" / Path(r["image"]).name)
    write_jsonl(root / "pope/coco_pope_random.jsonl",
                [{"question_id": r["question_id"], "image": Path(r["image"]).name, "text": r["text"],
                  "label": r["label"].capitalize()} for r in pope])
    write_jsonl(root / "arc/ARC-Easy-test.jsonl", [{
        "id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
        "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                    "label": [c["label"] for c in r["question"]["choices"]]},
    } for r in jsonl(world / "eval/text_mc.jsonl")])
    return {
        "text": [{"path": f"{base}/text/a.jsonl"}, {"path": f"{base}/text/b.jsonl.zst", "field": "content"},
                 {"path": f"{base}/text/*.parquet"}],
        "captions": [
            {"path": f"{base}/captions/*.tar"},
            {"path": f"{base}/captions/pairs.parquet", "image": "jpg", "caption": "txt"},
            {"path": f"{base}/captions/folder-jsonl/captions.jsonl", "image": "file", "caption": "text",
             "image_root": f"{base}/captions/folder-jsonl/img"},
            {"path": f"{base}/captions/folder-csv/captions.csv", "image": "filename",
             "image_root": f"{base}/captions/folder-csv/img"},
        ],
        "instruct": [{"path": f"{base}/llava/llava.json"}],
        "vqa": [vqa],
        "pope": [{"path": f"{base}/pope/coco_pope_random.jsonl", "image_root": f"{base}/pope/images"}],
        "text_mc": [{"path": f"{base}/arc/ARC-Easy-test.jsonl"}],
    }


def _vqa(world: Path, root: Path, base: str) -> dict:
    """VQAv2 files with COCO-style image names (`image_id` from the synthetic question's image)."""
    (root / "coco/val2014").mkdir(parents=True)
    questions = json.loads((world / "eval/vqa_questions.json").read_text())["questions"]
    for q in questions:
        shutil.copy2(world / "eval/images" / f"{q['image_id']:06d}.png",
                     root / "coco/val2014" / COCO.format(image_id=q["image_id"]))
    shutil.copy2(world / "eval/vqa_questions.json", root / "coco/v2_OpenEnded_mscoco_val2014_questions.json")
    shutil.copy2(world / "eval/vqa_annotations.json", root / "coco/v2_mscoco_val2014_annotations.json")
    return {"questions": f"{base}/coco/v2_OpenEnded_mscoco_val2014_questions.json",
            "annotations": f"{base}/coco/v2_mscoco_val2014_annotations.json", "image_root": f"{base}/coco/val2014"}


def write_folder_only(world: Path, root: Path, base: str | None = None) -> dict:
    """A folder of images + a captions JSONL (also the text corpus: its captions), LLaVA JSON and
    VQAv2: no text evaluation task."""
    base = base or str(root)
    shutil.copytree(world / "images", root / "images")
    shutil.copy2(world / "captions.jsonl", root / "captions.jsonl")
    shutil.copy2(world / "instruct.json", root / "llava.json")
    return {"text": [{"path": f"{base}/captions.jsonl", "field": "caption"}],
            "captions": [{"path": f"{base}/captions.jsonl"}], "instruct": [{"path": f"{base}/llava.json"}],
            "vqa": [_vqa(world, root, base)], "pope": [], "text_mc": []}
