"""`python -m pipeline.rehearsal [FOLDER]`: the rehearsal's input files (params/rehearsal.yaml).

A small synthetic world, written whole in the forms the real sets are distributed in, so that
`prepare` reads them through the same readers as a real run (default folder inputs/data/rehearsal):

    text/corpus.jsonl.gz                       the text corpus, gzip'd JSON lines (DCLM-style)
    datacomp/shards/0000000N.tar (+ .parquet, _stats.json)   DataComp's layout: WebDataset tars
                                                             with their metadata beside them
    llava/llava_v1_5_mix665k.json.gz, llava/images/   LLaVA JSON, plus LLaVA-shaped long chats
    coco/v2_*.json.gz, coco/val2014/           VQAv2 questions and annotations, COCO image names
    pope/coco_pope_adversarial.jsonl.gz        POPE JSON lines
    arc/test-00000-of-00001.parquet            ARC as Hugging Face distributes it

The long chats are what a real instruction set holds and the embedded world does not: multi-turn
conversations about one image, longer than the 2048-token context once the image's 729 tokens are
counted (cut at a turn boundary by stream-shard), and one whose first answer alone does not fit
(skipped and counted).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from vlm.config import FilesConfig, PrepareConfig
from vlm.data.world import write_world

OUT = Path("inputs/data/rehearsal")
COCO = "COCO_val2014_{image_id:012d}.jpg"
WORLD = PrepareConfig(source="synthetic", max_bad_fraction=0.01,
                      files=FilesConfig(text=[], captions=[], instruct=[], vqa=[], pope=[], text_mc=[]),
                      n_text_docs=1500, n_creatures=8, n_instruct_creatures=2, n_images=64, n_instruct=48,
                      text_instruct_share=0.25, n_eval=16, image_size=32)
SEED = 0
# (turns, words per answer): three chats cut to the context, one whose first answer cannot fit
LONG_CHATS = [(24, 110), (16, 160), (30, 90), (1, 2600)]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode(), mtime=0))  # no timestamp: the same bytes every time
    return path


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, fileobj=io.BytesIO(data))


def long_chats(world: Path, seed: int = SEED) -> list[dict]:
    """LLaVA-shaped conversations about one image each: a question, then answers made of the text
    corpus's own sentences (words the tokenizer knows), `turns` times."""
    rng = np.random.default_rng(seed)
    sentences = [s.strip() + "." for r in _jsonl(world / "text.jsonl") for s in r["text"].split(".") if s.strip()]
    images = sorted(r["image"] for r in json.loads((world / "instruct.json").read_text()) if "image" in r)
    chats = []
    for n, (turns, words) in enumerate(LONG_CHATS):
        conv = []
        for t in range(turns):
            answer: list[str] = []
            while sum(len(s.split()) for s in answer) < words:
                answer.append(sentences[rng.integers(len(sentences))])
            question = "what do you know about this?" if t else "<image>\ndescribe the image and tell me more."
            conv += [{"from": "human", "value": question}, {"from": "gpt", "value": " ".join(answer)}]
        chats.append({"id": f"long{n}", "image": images[n % len(images)], "conversations": conv})
    return chats


def write_as_distributed(world: Path, root: Path, extra_instruct: list[dict] = ()) -> dict:
    """`world`'s products (data/raw of the synthetic world) under `root` as the real sets come;
    returns the `prepare.files` params naming them (paths under `root`)."""
    _gz(root / "text/corpus.jsonl.gz", (world / "text.jsonl").read_text())

    caps = _jsonl(world / "captions.jsonl")
    shards = root / "datacomp/shards"
    shards.mkdir(parents=True)
    for n, part in enumerate((caps[: len(caps) // 2], caps[len(caps) // 2:])):
        members, uids = [], []
        for i, r in enumerate(part):
            key = f"{n:04d}{i:04d}"
            uids.append(f"uid{key}")
            members += [(f"{key}.png", (world / r["image"]).read_bytes()), (f"{key}.txt", r["caption"].encode()),
                        (f"{key}.json", json.dumps({"uid": uids[-1], "caption": r["caption"]}).encode())]
        _tar(shards / f"{n:08d}.tar", members)
        pd.DataFrame({"uid": uids, "url": ["https://example.invalid"] * len(uids),
                      "text": [r["caption"] for r in part]}).to_parquet(shards / f"{n:08d}.parquet")
        (shards / f"{n:08d}_stats.json").write_text(json.dumps({"count": len(part), "successes": len(part)}))

    llava = root / "llava"
    shutil.copytree(world / "images", llava / "images")
    convs = json.loads((world / "instruct.json").read_text()) + list(extra_instruct)
    _gz(llava / "llava_v1_5_mix665k.json.gz", json.dumps(convs))

    coco = root / "coco"
    (coco / "val2014").mkdir(parents=True)
    questions = json.loads((world / "eval/vqa_questions.json").read_text())
    for q in questions["questions"]:
        shutil.copy2(world / "eval/images" / f"{q['image_id']:06d}.png", coco / "val2014" / COCO.format(**q))
    vqa = {"questions": _gz(coco / "v2_OpenEnded_mscoco_val2014_questions.json.gz", json.dumps(questions)),
           "annotations": _gz(coco / "v2_mscoco_val2014_annotations.json.gz",
                              (world / "eval/vqa_annotations.json").read_text()),
           "image_root": coco / "val2014"}

    (root / "pope/images").mkdir(parents=True)
    pope = _jsonl(world / "eval/pope_adversarial.jsonl")
    for r in pope:
        shutil.copy2(world / "eval" / r["image"], root / "pope/images" / Path(r["image"]).name)
    _gz(root / "pope/coco_pope_adversarial.jsonl.gz", "".join(json.dumps(
        {"question_id": r["question_id"], "image": Path(r["image"]).name, "text": r["text"],
         "label": r["label"]}) + "\n" for r in pope))

    mc = _jsonl(world / "eval/text_mc.jsonl")
    (root / "arc").mkdir()
    pd.DataFrame({
        "id": [r["id"] for r in mc], "question": [r["question"]["stem"] for r in mc],
        "choices": [{"text": [c["text"] for c in r["question"]["choices"]],
                     "label": [c["label"] for c in r["question"]["choices"]]} for r in mc],
        "answerKey": [r["answerKey"] for r in mc],
    }).to_parquet(root / "arc/test-00000-of-00001.parquet")
    return {
        "text": [{"path": f"{root}/text/*.jsonl.gz"}],
        "captions": [{"path": f"{root}/datacomp/shards"}],
        "instruct": [{"path": f"{llava}/llava_v1_5_mix665k.json.gz", "image_root": str(llava)}],
        "vqa": [{k: str(v) for k, v in vqa.items()}],
        "pope": [{"path": f"{root}/pope/coco_pope_adversarial.jsonl.gz", "image_root": f"{root}/pope/images"}],
        "text_mc": [{"path": f"{root}/arc/*.parquet"}],
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        write_world(WORLD, SEED, world)
        write_as_distributed(world, out, long_chats(world))
    print(f"rehearsal: wrote {sum(1 for p in out.rglob('*') if p.is_file())} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
