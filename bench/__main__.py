"""`python -m bench` (`make bench`): the performance figures of issue 9, measured side by side in one
run on this machine, printed with their targets and written to reports/bench.json.

    python -m bench                  the full set (about 5 min on a 2-core CPU)
    python -m bench --quick          every code path at a tiny size (the test's run; figures meaningless)
    python -m bench --out FILE       write the JSON elsewhere

Figures:
  1. stack overhead: text-pretrain steps through Composer + StreamingDataset + our model against a
     bare PyTorch loop on the same model, batch, data (in memory) and threads (bench/stack.py);
  2. utilisation: model FLOPs per second over this machine's measured matmul peak, for the `tiny`
     default and the `79m` preset (short runs; on a GPU in bf16, the `1.4b` preset too);
  4. data stages at 1x and 10x the embedded world: tokenize against `tokenizers`' encode_batch, MDS
     write rate, and the Streaming read rate of the cooldown's mix against the training consumption
     rate (bench/data_rates.py);
  3. cooldown and fine-tuning steps with every image encoded as it comes, with the frozen encoder's
     cached features, and with those plus `train.split_by_length`, projected to the default's stage
     lengths (bench/image_steps.py), and the one-time cost of the stage encode-images.
  5. the params check as users meet it: `python -m pipeline.check_params` on the committed file and
     on one-edit copies that each break one rule, each call timed from interpreter start
     (bench/params_check.py).
  6. evaluation's greedy decoding at 79m, with the KV cache against recomputing the prefix at
     every step: the same answers, and the speed-up (bench/decode.py); on a GPU also in bf16 at
     evaluate's batch of 64.
  7. the `cpu` params' price: training steps with the committed pins against the machine's best
     kernels on every core, and `cpu.kernels: compatible` against them, each in a fresh process
     (bench/cpu_pinning.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from bench import cpu_pinning, data_rates, decode, image_steps, params_check, stack
from vlm.config import load

ROOT = Path(__file__).resolve().parents[1]
NEOX_VOCAB = 50_283  # GPT-NeoX's tokenizer with our special tokens: the presets' real vocabulary


def step_benches(cfg, quick: bool) -> dict[str, tuple[stack.StepBench, int]]:
    """{name: (setup, repeats)}: `tiny` at the default text-pretrain shape, the presets shorter."""
    if quick:
        return {"tiny": (stack.StepBench(seq_len=32, batch=4, warmup=2, steps=3), 1)}
    vocab = json.loads((ROOT / "metrics/tokens.json").read_text())["vocab_size"]
    out = {"tiny": (stack.StepBench("tiny", vocab, cfg.shard.seq_len, cfg.pretrain.batch_size, 5, 40), 3),
           "79m": (stack.StepBench("79m", NEOX_VOCAB, 256, 4, 2, 6), 1)}
    if torch.cuda.is_available():  # the study's shapes at sequence length 2048
        out["79m"] = (stack.StepBench("79m", NEOX_VOCAB, 2048, 16, 5, 20), 2)
        out["1.4b"] = (stack.StepBench("1.4b", NEOX_VOCAB, 2048, 4, 5, 20), 2)
    return out


def figures(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(figure, value, target, met) rows of the printed table."""
    rows = []
    tiny = results["steps"]["tiny"]
    rows.append(("stack / bare tokens/s, text-pretrain (tiny)",
                 f"{tiny['stack_tokens_per_sec']:,.0f} / {tiny['bare_tokens_per_sec']:,.0f} = "
                 f"{tiny['stack_over_bare']:.2f}", ">= 0.95", tiny["stack_over_bare"] >= 0.95))
    for name, r in results["steps"].items():
        target = {"79m": 0.5, "1.4b": 0.45}.get(name)
        rows.append((f"model FLOPs utilisation, {name} ({r['setup']['dtype']}, stack)",
                     f"{r['stack_utilisation']:.3f} (bare {r['bare_utilisation']:.3f}; peak "
                     f"{r['matmul_peak_flops'] / 1e9:,.0f} GFLOP/s)",
                     f">= {target}" if target else "-", r["stack_utilisation"] >= target if target else None))
    consume = tiny["stack_tokens_per_sec"] / tiny["setup"]["seq_len"]  # samples/s of text-pretrain
    for d in results["data"]:
        s = f"{d['scale']}x"
        rows.append((f"tokenize / encode_batch, {s} ({d['tokenize']['docs']:,} docs)",
                     f"{d['tokenize']['ours_docs_per_sec']:,.0f} / {d['tokenize']['encode_batch_docs_per_sec']:,.0f}"
                     f" docs/s = {d['tokenize']['ours_over_encode_batch']:.2f}", ">= 0.8",
                     d["tokenize"]["ours_over_encode_batch"] >= 0.8))
        rows.append((f"MDS write (stream-shard), {s}",
                     f"{d['mds_write']['samples_per_sec']:,.0f} samples/s, {d['mds_write']['mb_per_sec']:.1f} MB/s",
                     "-", None))
        ratio = d["streaming_read"]["samples_per_sec"] / consume
        rows.append((f"Streaming read (cooldown mix) / training consumption, {s}",
                     f"{d['streaming_read']['samples_per_sec']:,.0f} / {consume:,.0f} samples/s = {ratio:.1f}",
                     ">= 10", ratio >= 10))
    img = results["image_steps"]
    v = img["variants"]
    rows.append(("cooldown + finetune seconds (projected): pixels, features, + split",
                 " -> ".join(f"{r['projected_seconds']:.0f} s (x{r['speedup']:.2f})" for r in v.values()),
                 ">= 2x", v["features + split"]["speedup"] >= 2))
    rows.append(("  of which cached features alone", f"x{v['features']['speedup']:.2f}", "-", None))
    read = img["streaming_read_features"]["samples_per_sec"]
    rows.append(("Streaming read (cooldown mix, cached features) / consumption, 1x",
                 f"{read:,.0f} / {consume:,.0f} samples/s = {read / consume:.1f}", ">= 10", read / consume >= 10))
    rows.append(("encode-images (once per encoder and data)", f"{img['encode_images_seconds']:.1f} s", "-", None))
    pc = results["params_check"]
    rows.append((f"params check, slowest of {len(pc['cases'])} bad files (good file)",
                 f"{pc['max_bad_seconds']:.2f} s ({pc['good_seconds']:.2f} s)", "< 1 s", pc["max_bad_seconds"] < 1))
    for dec in results["decode"]:
        setup = dec["setup"]
        rows.append((f"greedy decoding, cached / uncached tokens/s ({setup['preset']}, {setup['device']}, "
                     f"batch {setup['batch']}, {setup['new_tokens']} new tokens)",
                     f"{dec['cached']['tokens_per_sec']:,.1f} / {dec['uncached']['tokens_per_sec']:,.1f} = "
                     f"{dec['speedup']:.2f} (same answers: {dec['same_answers']})", "> 1, same answers",
                     dec["speedup"] > 1 and dec["same_answers"]))
    pin = results["cpu_pinning"]
    rows.append((f"training tokens/s, `cpu` pinned ({pin['pinned']['capability']}, {pin['pinned']['threads']} threads) "
                 f"/ native ({pin['native']['capability']}, {pin['native']['threads']})",
                 f"{pin['pinned']['tokens_per_sec']:,.0f} / {pin['native']['tokens_per_sec']:,.0f} = "
                 f"{pin['pinned_over_native']:.2f} (same weights: {pin['same_weights']})", "-", None))
    compatible, pinned = pin["compatible"], pin["pinned"]
    rows.append((f"training tokens/s, `cpu.kernels` compatible / {pinned['cpu']['kernels']} "
                 f"({pinned['threads']} threads)",
                 f"{compatible['tokens_per_sec']:,.0f} / {pinned['tokens_per_sec']:,.0f} = "
                 f"{pin['compatible_over_pinned']:.2f}", "-", None))
    for d in results["data"]:
        rows.append((f"data stage seconds, {d['scale']}x",
                     ", ".join(f"{k} {v:.1f}" for k, v in d["stage_seconds"].items()), "linear in size", None))
    return rows


def table(rows: list[tuple[str, str, str, bool | None]]) -> str:
    width = max(len(r[0]) for r in rows)
    mark = {True: "met", False: "MISSED", None: ""}
    return "\n".join(f"{f:<{width}}  {v}  [target {t}] {mark[m]}".rstrip() for f, v, t, m in rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every code path at a tiny size")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/bench.json")
    args = parser.parse_args(argv)
    cfg = load(ROOT / "params.yaml")
    t0 = time.time()
    results: dict = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                     "cpus": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "steps": {}}
    for name, (setup, repeats) in step_benches(cfg, args.quick).items():
        print(f"bench: training steps, {name} ...", flush=True)
        results["steps"][name] = stack.run(setup, repeats)
    print("bench: the params check ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results["params_check"] = params_check.measure(Path(tmp), quick=args.quick)
    print("bench: greedy decoding with and without the KV cache ...", flush=True)
    results["decode"] = [decode.measure(
        decode.DecodeBench("tiny", 300, 16, 8, 2, 3, 1) if args.quick else decode.DecodeBench())]
    if torch.cuda.is_available() and not args.quick:  # evaluate's shape on a GPU: bf16, a full batch
        results["decode"].append(decode.measure(decode.DecodeBench(batch=64), "cuda"))
    print("bench: training steps with the `cpu` params' pinned kernels and threads, and without ...", flush=True)
    vocab = 300 if args.quick else json.loads((ROOT / "metrics/tokens.json").read_text())["vocab_size"]
    results["cpu_pinning"] = cpu_pinning.measure(cfg, vocab, *((32, 4, 1, 2) if args.quick else
                                                               (cfg.shard.seq_len, cfg.pretrain.batch_size)))
    results["data"] = []
    for scale in (1,) if args.quick else (1, 10):
        print(f"bench: data stages at {scale}x ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            results["data"].append(data_rates.measure(cfg, scale, Path(tmp), 256 if args.quick else None))
            if scale == 1:  # on the default world data_rates just wrote
                print("bench: cooldown and fine-tuning steps with images ...", flush=True)
                results["image_steps"] = image_steps.measure(cfg, Path(tmp), *((2, 1, 256) if args.quick else (20, 3)))
    results["seconds"] = round(time.time() - t0, 1)
    rows = figures(results)
    results["table"] = [dict(zip(("figure", "value", "target", "met"), r, strict=True)) for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(rows))
    print(f"bench: {results['seconds']:.0f}s; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
