"""The README's usage example runs as written and does what it says."""

import io
import re
from contextlib import redirect_stdout
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs_and_learns():
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(block.strip().splitlines()) <= 12
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {})
    acc = float(re.search(r"test accuracy after one epoch: ([0-9.]+)", out.getvalue()).group(1))
    assert acc >= 0.7
