"""The evaluate stage's own logic without a trained model: the warnings a user sees when the
answers are in the wrong form, the device param, and the order of metrics/eval.json."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline import evaluate
from vlm.evaluation import scoring


def test_a_run_answering_number_words_prints_the_warning(monkeypatch, capsys, tmp_path):
    """The issue's handwritten-digits run: ground truth "two", the model answers "two"; VQA scores
    0.0 by the official rule, and the log says why in plain words."""
    (tmp_path / "a.png").write_bytes(b"png")
    words = ["one", "two", "three", "four"] * 3
    items = [{"question": f"how many digits are there, {i}?", "image": tmp_path / "a.png", "answers": [w] * 10,
              "answer_type": "number", "multiple_choice_answer": w} for i, w in enumerate(words)]
    answer_of = {it["question"]: it["multiple_choice_answer"] for it in items}
    monkeypatch.setattr(scoring, "generate", lambda model, collate, codec, qs, images, n: [answer_of[q] for q in qs])
    tasks = {"vqa": {"kind": "vqa", "chance": 0.25, "items": items}}
    scores, diagnostics = evaluate.evaluate_phase("finetune", tasks, None, None, vlm="model",
                                                  collate=SimpleNamespace(features="cached"), batch_size=5)
    assert scores["vqa"]["accuracy"] == 0.0 and scores["vqa"]["n"] == 12
    out = capsys.readouterr().out
    assert "evaluate: WARNING finetune/vqa: 100% of the answers are number words (e.g. 'one')" in out
    assert "never score" in out and diagnostics["vqa"]["warnings"]


def test_evaluate_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert evaluate.eval_device("auto") == evaluate.eval_device("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit, match="`evaluate.device` is cuda, but torch sees no CUDA device"):
        evaluate.eval_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert evaluate.eval_device("auto") == torch.device("cuda", 1) and evaluate.eval_device("cpu").type == "cpu"


def test_metrics_file_puts_the_headline_first():
    task = {"accuracy": 0.5, "accuracy_se": 0.1, "n": 3, "chance": 0.5, "stable": 0.0, "stable_se": 0.2,
            "precision": 1.0, "examples": []}
    final = {"pope": task, "stable_mean": 0.0, "stable_mean_se": None, "vision_stable": 0.0,
             "vision_stable_se": 0.2, "text_stable": None, "text_stable_se": None}
    metrics = evaluate.headline_first(final, {"pope": {}}, {"finetune": final})
    assert list(metrics) == ["vision_stable", "vision_stable_se", "stable_mean", "tasks", "phases"]
    assert list(metrics["tasks"]["pope"]) == ["accuracy", "accuracy_se", "stable", "stable_se", "n", "chance",
                                              "precision"]


def test_a_caption_task_is_headlined_from_the_cooldown():
    """caption_only asks for words fine-tuning never says: its headline is the cooldown's score (with
    the fine-tuned one beside it), and vision_stable averages that, not the fine-tuned score."""
    def scored(accuracy: float) -> dict:
        return {"accuracy": accuracy, "accuracy_se": 0.01, "stable": 2 * accuracy - 1, "stable_se": 0.02,
                "n": 100, "chance": 0.5}
    tasks = {"caption_only": {"kind": "caption"}, "pope": {"kind": "pope"}, "text_mc": {"kind": "mc"}}
    phases = {"cooldown": {"caption_only": scored(0.9), "pope": scored(0.5), "text_mc": scored(1.0)},
              "finetune": {"caption_only": scored(0.5), "pope": scored(0.8), "text_mc": scored(0.75)}}
    final = evaluate.headline(tasks, phases)
    assert final["caption_only"]["accuracy"] == 0.9 and final["caption_only"]["phase"] == "cooldown"
    assert final["caption_only"]["after_finetune"] == 0.5
    assert final["pope"] == phases["finetune"]["pope"] and "phase" not in final["pope"]
    assert final["vision_stable"] == pytest.approx((0.8 + 0.6) / 2)  # cooldown caption 0.8, fine-tuned POPE 0.6
    assert final["text_stable"] == pytest.approx(0.5)
