"""`prepare.source: files` (vlm/data/ingest.py): the user's formats in, data/raw's layout out.

A synthetic world spread over every format must come back as that same world; each kind of bad
record is skipped and counted, and fails the source only above `prepare.max_bad_fraction`.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from userdata import COCO, write_every_format, write_jsonl, write_tar

from pipeline.rehearsal import write_as_distributed
from vlm.config import FilesConfig, build
from vlm.data import readers
from vlm.data.ingest import resolve, write_files
from vlm.data.readers import DataError
from vlm.data.vqa_answers import answer_prior_accuracy


def files_config(params: dict) -> FilesConfig:
    errors: list[str] = []
    files = build(FilesConfig, {role: params.get(role, []) for role in
                                ("text", "captions", "instruct", "vqa", "pope", "text_mc")}, "prepare.files.", errors)
    assert not errors, errors
    return files


def ingest(params: dict, out: Path, max_bad: float = 0.01) -> dict:
    out.mkdir()
    return write_files(files_config(params), max_bad, out)


@pytest.fixture(scope="module")
def every_format(small_world, tmp_path_factory):
    """(world, the user's files' params, data/raw written from them)."""
    root = tmp_path_factory.mktemp("user")
    params = write_every_format(small_world, root / "inputs")
    ingest(params, root / "raw")
    return small_world, params, root / "raw"


def assert_the_world(world: Path, raw: Path, pope: str) -> None:
    """data/raw written from a user's files holds `world`'s records, images and tasks."""
    assert readers.read_text(raw / "text.jsonl") == readers.read_text(world / "text.jsonl")
    got, want = readers.read_captions(raw / "captions.jsonl"), readers.read_captions(world / "captions.jsonl")
    assert [c for _, c in got] == [c for _, c in want]
    assert [p.read_bytes() for p, _ in got] == [p.read_bytes() for p, _ in want]
    got, want = readers.read_llava(raw / "instruct.json"), readers.read_llava(world / "instruct.json")
    assert [r["conversations"] for r in got] == [r["conversations"] for r in want]
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert [(raw / r["image"]).read_bytes() if "image" in r else None for r in got] == [
        (world / r["image"]).read_bytes() if "image" in r else None for r in want]
    # each distinct instruction image is stored once, however many conversations name it
    assert len(list((raw / "images/instruct").iterdir())) == len({r["image"] for r in want if "image" in r})

    tasks = json.loads((raw / "eval/tasks.json").read_text())
    assert set(tasks) == {"vqa", pope, "text_mc"}
    got = readers.read_vqa(raw / "eval/vqa_questions.json", raw / "eval/vqa_annotations.json", raw / "eval")
    want = readers.read_vqa(world / "eval/vqa_questions.json", world / "eval/vqa_annotations.json",
                            world / "eval/images")
    assert [(g["question"], g["answers"], g["answer_type"]) for g in got] == [
        (w["question"], w["answers"], w["answer_type"]) for w in want]
    assert [g["image"].read_bytes() for g in got] == [w["image"].read_bytes() for w in want]
    got, want = readers.read_pope(raw / f"eval/{pope}.jsonl"), readers.read_pope(world / "eval/pope_adversarial.jsonl")
    assert [(g["text"], g["label"], g["image"].read_bytes()) for g in got] == [
        (w["text"], w["label"], w["image"].read_bytes()) for w in want]  # "Yes" in the file reads as "yes"
    assert readers.read_mc(raw / "eval/text_mc.jsonl") == readers.read_mc(world / "eval/text_mc.jsonl")
    assert tasks["text_mc"]["chance"] == 0.25 and tasks[pope]["chance"] == 0.5
    assert 0 < tasks["vqa"]["chance"] < 1


def test_every_format_comes_back_as_the_world_it_was_made_from(every_format):
    world, params, raw = every_format
    assert_the_world(world, raw, "pope_random")  # the split named in coco_pope_random.jsonl

    index = json.loads((raw / "sources.json").read_text())
    assert index["sources"]["prepare.files.captions[0]"]["kept"] == 10
    assert all(s["skipped"] == 0 for s in index["sources"].values())
    assert index["read"]["prepare.files.text[2]"] == [params["text"][2]["path"].replace("*", "c")]


def test_the_sets_as_distributed_come_back_as_the_world(small_world, tmp_path):
    """gzip'd JSON and JSON lines, DataComp's `shards/` folder (its Parquet and stats files beside the
    tars are metadata, not samples) and ARC in Parquet: the same world as the plain files give."""
    params = write_as_distributed(small_world, tmp_path / "inputs")
    ingest(params, tmp_path / "raw")
    assert_the_world(small_world, tmp_path / "raw", "pope_adversarial")
    index = json.loads((tmp_path / "raw/sources.json").read_text())
    assert [Path(p).name for p in index["read"]["prepare.files.captions[0]"]] == ["00000000.tar", "00000001.tar"]
    assert all(s["skipped"] == 0 for s in index["sources"].values())


def test_a_folder_is_read_only_as_a_caption_sources_shards(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards/00000000.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"`prepare.files.captions\[0\].path`: the folder .* holds no \*.tar"):
        resolve(files_config({"captions": [{"path": str(tmp_path / "shards")}]}))
    with pytest.raises(DataError, match=r"`prepare.files.text\[0\].path`: .* matches no file \(a folder is taken"):
        resolve(files_config({"text": [{"path": str(tmp_path / "shards")}]}))


def test_a_corrupt_gzip_file_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "llava.json.gz"
    path.write_bytes(gzip.compress(b'[{"id": "a", "conversations": []}]')[:-12])  # cut short
    with pytest.raises(DataError, match=r"llava.json.gz: cannot decompress"):
        list(readers.json_list_records(path))


def test_the_same_files_give_the_same_bytes(every_format, tmp_path):
    _, params, raw = every_format
    ingest(params, tmp_path / "again")
    for path in sorted(p for p in raw.rglob("*") if p.is_file()):
        assert (tmp_path / "again" / path.relative_to(raw)).read_bytes() == path.read_bytes(), path


def test_a_path_that_matches_nothing_fails_before_reading_and_names_the_param(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    files = files_config({"text": [{"path": str(tmp_path / "a.jsonl")}],
                          "captions": [{"path": str(tmp_path / "shards/*.tar")}]})
    with pytest.raises(DataError, match=r"`prepare.files.captions\[0\].path`: .*shards/\*.tar' matches no file"):
        resolve(files)
    files = files_config({"pope": [{"path": str(tmp_path / "a.jsonl"), "image_root": str(tmp_path / "nope")}]})
    with pytest.raises(DataError, match=r"`prepare.files.pope\[0\].image_root`: .* is not a folder"):
        resolve(files)


# ---- bad records: skipped, counted, and fatal only above the threshold ---------------------------

def png(colour: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def good_tar_members(n: int) -> list[tuple[str, bytes]]:
    return [m for i in range(n) for m in ((f"{i:04d}.png", png()), (f"{i:04d}.txt", b"a red square"))]


def minimal(tmp_path: Path, **role_params) -> dict:
    """Valid one-record sources for every role, with some roles replaced."""
    write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}])
    write_tar(tmp_path / "ok.tar", good_tar_members(1))
    (tmp_path / "img.png").write_bytes(png())
    (tmp_path / "llava.json").write_text(json.dumps([{"id": "a", "image": "img.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour?"}, {"from": "gpt", "value": "red"}]}]))
    write_jsonl(tmp_path / "mc.jsonl", [{"id": "q", "question": "2+2?", "answerKey": "B",
                                         "choices": {"text": ["3", "4"], "label": ["A", "B"]}}])
    base = {"text": [{"path": str(tmp_path / "t.jsonl")}], "captions": [{"path": str(tmp_path / "ok.tar")}],
            "instruct": [{"path": str(tmp_path / "llava.json")}], "text_mc": [{"path": str(tmp_path / "mc.jsonl")}]}
    return base | role_params


def bad_tar(tmp_path: Path, bad: list[tuple[str, bytes]], name: str = "bad.tar") -> dict:
    return {"captions": [{"path": str(write_tar(tmp_path / name, good_tar_members(9) + bad))}]}


def truncated_tar(tmp_path: Path) -> dict:
    path = write_tar(tmp_path / "cut.tar", good_tar_members(9) + [("big.png", png() * 40), ("big.txt", b"x")])
    path.write_bytes(path.read_bytes()[:9 * 2 * 1024 + 1024])  # cut inside the last image
    return {"captions": [{"path": str(path)}]}


def absolute_member(tmp_path: Path) -> dict:
    path = tmp_path / "abs.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in good_tar_members(9) + [("/etc/evil.png", png())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return {"captions": [{"path": str(path)}]}


def parquet_without_caption(tmp_path: Path) -> dict:
    (tmp_path / "pq").mkdir()
    pd.DataFrame({"image": [png()] * 9, "caption": ["a red square"] * 9}).to_parquet(tmp_path / "pq/0.parquet")
    pd.DataFrame({"image": [png()], "text": ["a"]}).to_parquet(tmp_path / "pq/1.parquet")
    return {"captions": [{"path": str(tmp_path / "pq/*.parquet")}]}


def instruct_missing_image(tmp_path: Path) -> dict:
    (tmp_path / "img.png").write_bytes(png())
    records = [{"id": str(i), "image": "img.png" if i else "gone.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour?"}, {"from": "gpt", "value": "red"}]} for i in range(10)]
    (tmp_path / "ll.json").write_text(json.dumps(records))
    return {"instruct": [{"path": str(tmp_path / "ll.json")}]}


def vqa_few_answers(tmp_path: Path) -> dict:
    (tmp_path / "coco").mkdir()
    for i in range(10):
        (tmp_path / "coco" / COCO.format(image_id=i)).write_bytes(png())
    (tmp_path / "q.json").write_text(json.dumps({"questions": [
        {"question_id": i, "image_id": i, "question": "what colour?"} for i in range(10)]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": i, "image_id": i, "answer_type": "other", "multiple_choice_answer": "red",
         "answers": [{"answer": "red", "answer_id": j} for j in range(3 if i == 0 else 10)]} for i in range(10)]}))
    return {"vqa": [{"questions": str(tmp_path / "q.json"), "annotations": str(tmp_path / "a.json"),
                     "image_root": str(tmp_path / "coco")}]}


BAD = {  # name: (sources with one bad record among good ones, its source, the reason counted, records skipped)
    "corrupt image in a tar": (lambda p: bad_tar(p, [("x.png", png()[:40]), ("x.txt", b"cut")]),
                               "captions[0]", "image is unreadable", 1),
    "truncated tar": (truncated_tar, "captions[0]", "the archive is truncated or corrupt after 9 samples", 1),
    "image with no caption": (lambda p: bad_tar(p, [("x.png", png())]), "captions[0]", "no caption", 1),
    "caption with no image": (lambda p: bad_tar(p, [("x.txt", b"lonely")]), "captions[0]", "no image", 1),
    "empty tar": (lambda p: {"captions": [{"path": str(write_tar(p / "tars/0.tar", good_tar_members(9)).parent)
                                           + "/*.tar"}] if write_tar(p / "tars/1.tar", []) else None},
                  "captions[0]", "no samples in the archive", 1),
    "parquet missing a column": (parquet_without_caption, "captions[0]", "no column `caption`", 1),
    "instruction image missing": (instruct_missing_image, "instruct[0]", "image", 1),
    "vqa with 3 answers": (vqa_few_answers, "vqa[0]", "3 answers; VQAv2 accuracy needs 10 answer strings", 1),
    "tar member with an absolute path": (absolute_member, "captions[0]", "absolute or `..` path", 1),
    "tar member with ..": (lambda p: bad_tar(p, [("../up.png", png()), ("../up.txt", b"x")]),
                           "captions[0]", "absolute or `..` path", 2),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_record_is_skipped_and_counted_and_fails_only_above_the_threshold(name, tmp_path):
    make, source, reason, n_bad = BAD[name]
    (tmp_path / "in").mkdir()
    params = minimal(tmp_path / "in", **make(tmp_path / "in"))
    key = f"prepare.files.{source}"
    with pytest.raises(DataError) as err:
        ingest(params, tmp_path / "strict", max_bad=0.01)
    assert str(err.value).startswith(f"`{key}`: {n_bad} of ") and reason in str(err.value)
    assert "more than `prepare.max_bad_fraction` 0.01" in str(err.value)

    tallies = ingest(params, tmp_path / "lenient", max_bad=0.5)
    assert tallies[key].skipped == n_bad
    index = json.loads((tmp_path / "lenient/sources.json").read_text())["sources"][key]
    assert index["skipped"] == n_bad and sum(index["reasons"].values()) == n_bad
    assert any(reason in r for r in index["reasons"]) or any(reason in e for e in index["examples"])


# ---- the VQA chance level of a user's set -------------------------------------------------------

# (question, answer_type, multiple_choice_answer, the ten human answers), in file order
CHANCE_SET = [
    ("is the square red?", "yes/no", "yes", ["yes"] * 10),
    ("is there a circle?", "yes/no", "no", ["no"] * 7 + ["yes"] * 3),
    ("is it big?", "yes/no", "yes", ["yes"] * 6 + ["no"] * 4),
    ("what colour is the circle?", "other", "red", ["red"] * 9 + ["blue"]),
    ("what colour is the square?", "other", "blue", ["blue"] * 5 + ["red"] * 2 + ["navy"] * 3),
]
# The guesser gives each question its type's most frequent multiple_choice_answer: yes/no: "yes" (2)
# over "no" (1); other: "red" 1, "blue" 1, a tie, so the alphabetically first, "blue" ("red" is met first).
# Its VQA accuracy (n of ten humans giving the guess: mean over leaving each out of min(others / 3, 1)):
#   "yes" vs 10 yes: 1.0;  vs 3 yes: (3 x 2/3 + 7 x 1) / 10 = 0.9;  vs 6 yes: 1.0
#   "blue" vs 1 blue: (1 x 0 + 9 x 1/3) / 10 = 0.3;  vs 5 blue: 1.0
#   chance = (1.0 + 0.9 + 1.0 + 0.3 + 1.0) / 5 = 4.2 / 5 = 0.84
# Guessing "red" for the tie would give (1.0 + 0.9 + 1.0 + 1.0 + 0.6) / 5 = 0.9 ("red" is 2 of 10 on the
# last question); one guess for all types ("yes") (1.0 + 0.9 + 1.0 + 0 + 0) / 5 = 0.58.
CHANCE = 0.84


def chance_items(rows: list[tuple]) -> list[dict]:
    return [{"answer_type": t, "multiple_choice_answer": mca, "answers": answers} for _, t, mca, answers in rows]


def test_answer_prior_accuracy_by_hand():
    assert answer_prior_accuracy(chance_items(CHANCE_SET)) == pytest.approx(CHANCE)
    # the tie goes to "blue" by the alphabet whichever comes first
    assert answer_prior_accuracy(chance_items(CHANCE_SET[::-1])) == pytest.approx(CHANCE)
    # a third colour question answered "red" breaks the tie: other -> "red", which scores 1.0 (9 of 10),
    # 0.6 (2 of 10) and 1.0 (10 of 10): (1.0 + 0.9 + 1.0 + 1.0 + 0.6 + 1.0) / 6 = 5.5 / 6 = 0.91666...
    extra = ("what colour is the ball?", "other", "red", ["red"] * 10)
    assert answer_prior_accuracy(chance_items([*CHANCE_SET, extra])) == pytest.approx(0.9166666667)


def test_the_vqa_chance_written_for_a_users_set_is_worked_by_hand(tmp_path):
    coco = tmp_path / "in/coco"
    coco.mkdir(parents=True)
    questions, annotations = [], []
    for i, (question, answer_type, mca, answers) in enumerate(CHANCE_SET):
        qid, image_id = 9000 + i, 500 + i
        (coco / COCO.format(image_id=image_id)).write_bytes(png(["red", "green", "blue", "white", "black"][i]))
        questions.append({"question_id": qid, "image_id": image_id, "question": question})
        annotations.append({"question_id": qid, "image_id": image_id, "answer_type": answer_type,
                            "multiple_choice_answer": mca, "question_type": "is the",
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                        for j, a in enumerate(answers)]})
    (tmp_path / "in/questions.json").write_text(json.dumps({"questions": questions}))
    (tmp_path / "in/annotations.json").write_text(json.dumps({"annotations": annotations[::-1]}))  # joined by id
    vqa = {"questions": str(tmp_path / "in/questions.json"), "annotations": str(tmp_path / "in/annotations.json"),
           "image_root": str(coco)}
    ingest(minimal(tmp_path / "in", vqa=[vqa]), tmp_path / "raw")

    tasks = json.loads((tmp_path / "raw/eval/tasks.json").read_text())
    assert tasks["vqa"]["chance"] == pytest.approx(CHANCE, rel=1e-6)
    loaded = readers.load_tasks(tmp_path / "raw/eval")["vqa"]  # as the evaluate stage reads it
    assert loaded["chance"] == pytest.approx(CHANCE, rel=1e-6)
    assert [(it["question"], it["answer_type"], it["multiple_choice_answer"], it["answers"])
            for it in loaded["items"]] == CHANCE_SET


def test_each_pope_split_is_a_task_of_its_own(small_world, tmp_path):
    """POPE's files name their split (coco_pope_popular.json); `split` names it otherwise. Files of
    one split, from any source, make one task; a file with no split makes `pope`."""
    images = tmp_path / "inputs/pope/images"
    images.mkdir(parents=True)
    pope = [json.loads(line) for line in (small_world / "eval/pope_adversarial.jsonl").read_text().splitlines()]
    for r in pope:
        (images / Path(r["image"]).name).write_bytes((small_world / "eval" / r["image"]).read_bytes())
    records = [{"image": Path(r["image"]).name, "text": r["text"], "label": r["label"]} for r in pope]
    parts = {"coco_pope_random.jsonl": records[:3], "coco_pope_popular.jsonl": records[3:5],
             "coco_pope_adversarial.jsonl": records[5:6], "mine.jsonl": records[6:8], "extra.jsonl": records[8:9]}
    for name, part in parts.items():
        write_jsonl(tmp_path / "inputs/pope" / name, part)
    source = {"path": str(tmp_path / "inputs/pope/coco_pope_*.jsonl"), "image_root": str(images)}
    params = {"pope": [source, {"path": str(tmp_path / "inputs/pope/mine.jsonl"), "image_root": str(images)},
                       {**source, "path": str(tmp_path / "inputs/pope/extra.jsonl"), "split": "popular"}]}
    ingest(params, tmp_path / "raw")
    tasks = json.loads((tmp_path / "raw/eval/tasks.json").read_text())
    assert tasks == {name: {"kind": "pope", "file": f"{name}.jsonl", "chance": 0.5}
                     for name in ("pope", "pope_adversarial", "pope_popular", "pope_random")}
    texts = {name: [it["text"] for it in readers.read_pope(tmp_path / "raw/eval" / t["file"])]
             for name, t in tasks.items()}
    assert texts == {"pope_random": [r["text"] for r in records[:3]],
                     "pope_popular": [r["text"] for r in records[3:5] + records[8:9]],
                     "pope_adversarial": [records[5]["text"]], "pope": [r["text"] for r in records[6:8]]}
