"""Fine-tune a small causal language model with ZOTrainer (MeZO) and with Trainer + AdamW, side by side.

Runs offline: the model is built from a GPT-2 config with random weights (``--model PATH``
loads a local checkpoint instead: ``AutoModelForCausalLM.from_pretrained(PATH)``, no download),
and the task is made here — counting sequences (next token = previous + stride, mod the
vocabulary), a different stride per row. Both methods see the same batches from the same
initial weights; the script prints a table (method, peak MB, s/step, held-out loss before and
after training) and saves a plot of both loss curves::

    python examples/finetune_lm.py                       # ~2 CPU-minutes
    python examples/finetune_lm.py --zo-steps 2000 --out finetune.png

ZO needs many more (cheaper, backward-free, gradient-free) steps than AdamW: that is the
trade MeZO makes for inference-level memory. Its stable learning rate falls with the number of
parameters (SPSA's estimate has variance ~ d·‖∇ℓ‖²): on the default 0.8 M-parameter model
``--zo-lr 1e-3`` no longer makes progress and 3e-3 or more diverges, so the default is 3e-4;
from random weights a few hundred ZO steps lower the loss only a little (MeZO fine-tunes
pretrained models, where far fewer directions matter). Peak MB is the growth of the resident set during
``trainer.train()`` (Linux ``/proc``), model and data excluded.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from typing import Dict, List, Tuple

import torch


# -- data: an offline task ----------------------------------------------------------------
def counting_task(rows: int, length: int, vocab: int, seed: int) -> List[Dict[str, torch.Tensor]]:
    """``rows`` sequences ``(start + stride·t) mod vocab``, ``t < length``; labels = inputs (causal LM)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (rows, 1), generator=g)
    stride = torch.randint(1, 4, (rows, 1), generator=g)
    ids = (start + stride * torch.arange(length)) % vocab  # (rows, length)
    return [{"input_ids": r, "labels": r.clone()} for r in ids]


def build_model(path: str, size: str):
    import transformers

    if path:
        return transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    width, layers, vocab = {"tiny": (32, 2, 64), "small": (128, 4, 256)}[size]
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=vocab,
        n_embd=width,
        n_layer=layers,
        n_head=max(1, width // 32),
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


# -- memory ---------------------------------------------------------------------------------
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def _reset_peak() -> int:
    """Reset VmHWM to the current resident size; returns that size (bytes), or -1 off Linux."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status("VmRSS")
    except OSError:
        return -1


# -- one run ----------------------------------------------------------------------------------
def run(method: str, args, train, held_out, out_dir: str) -> Tuple[Dict[str, float], List[Tuple[int, float]]]:
    import transformers

    from zeroth.integrations.transformers import ZOTrainer

    model = build_model(args.model, args.size)
    zo = method == "ZOTrainer (MeZO)"
    steps = args.zo_steps if zo else args.adam_steps
    targs = transformers.TrainingArguments(
        output_dir=os.path.join(out_dir, "zo" if zo else "adamw"),
        per_device_train_batch_size=args.batch,
        learning_rate=args.zo_lr if zo else args.adam_lr,
        max_steps=steps,
        logging_steps=max(1, steps // 20),
        lr_scheduler_type="constant",
        weight_decay=0.0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
        log_level="error",
        dataloader_num_workers=0,
    )
    cls = ZOTrainer if zo else transformers.Trainer
    trainer = cls(model=model, args=targs, train_dataset=train, eval_dataset=held_out)
    initial = trainer.evaluate()["eval_loss"]
    start_rss = _reset_peak()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - start_rss if start_rss >= 0 else float("nan")
    final = trainer.evaluate()["eval_loss"]
    curve = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    result = {"peak_mb": peak / 2**20, "s_per_step": seconds / steps, "initial_loss": initial, "final_loss": final}
    return {**result, "steps": steps}, curve


def main(argv=None) -> Dict[str, Dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="local checkpoint directory (default: GPT-2 from a config)")
    ap.add_argument("--size", default="small", choices=["tiny", "small"], help="config size without --model")
    ap.add_argument("--zo-steps", type=int, default=600)
    ap.add_argument("--adam-steps", type=int, default=60)
    ap.add_argument("--zo-lr", type=float, default=3e-4)
    ap.add_argument("--adam-lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="finetune_lm.png", help="loss plot (PNG)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    vocab = build_model(args.model, args.size).config.vocab_size
    train = counting_task(256, args.length, vocab, args.seed)
    held_out = counting_task(64, args.length, vocab, args.seed + 1)

    results, curves = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("ZOTrainer (MeZO)", "Trainer + AdamW"):
            results[method], curves[method] = run(method, args, train, held_out, tmp)

    print(f"{'method':<20}{'steps':>7}{'peak MB':>10}{'s/step':>10}{'start loss':>12}{'final loss':>12}")
    for method, r in results.items():
        print(
            f"{method:<20}{r['steps']:>7}{r['peak_mb']:>10.1f}{r['s_per_step']:>10.4f}"
            f"{r['initial_loss']:>12.4g}{r['final_loss']:>12.4g}"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, curve in curves.items():
        ax.plot([s for s, _ in curve], [v for _, v in curve], label=method)
    ax.set_xscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Counting task, GPT-2 from a config" if not args.model else f"Counting task, {args.model}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"loss plot: {args.out}")
    return results


if __name__ == "__main__":
    main()
