"""examples/finetune_lm.py runs end to end on a tiny config: table, plot, both methods train."""

import importlib.util
import os

import pytest

pytest.importorskip("transformers", reason="the [hf] extra (CI installs it)")
pytest.importorskip("matplotlib", reason="the plot needs matplotlib (dev extra)")

HERE = os.path.dirname(os.path.abspath(__file__))


def test_finetune_example_prints_a_table_and_saves_a_plot(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "finetune_lm", os.path.join(HERE, "..", "..", "examples", "finetune_lm.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "loss.png"
    results = mod.main(
        [
            "--size",
            "tiny",
            "--zo-steps",
            "10",
            "--adam-steps",
            "10",
            "--batch",
            "8",
            "--length",
            "16",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert "ZOTrainer (MeZO)" in text and "Trainer + AdamW" in text and "final loss" in text
    assert out.exists() and out.stat().st_size > 1000
    assert set(results) == {"ZOTrainer (MeZO)", "Trainer + AdamW"}
    for r in results.values():
        assert r["final_loss"] < 4.3 and r["s_per_step"] > 0
    assert results["Trainer + AdamW"]["final_loss"] < 4.0  # log(64) = 4.16: the first-order scale learns
