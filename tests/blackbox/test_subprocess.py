"""Subprocess adapter against a real external program (tests/blackbox/bbprogram.py).

Each failure mode (time-out, crash, NaN, malformed output) has its documented behaviour, and a
failed step leaves the network's parameters and the optimizer's state untouched.
"""

import contextlib
import math
import os
import sys
import tempfile
import time
import warnings

import pytest
import torch
from torch import nn

from zeroth import CGE
from zeroth.blackbox import BlackBox, ProgramError, ProgramWarning, Subprocess

SCRIPT = os.path.join(os.path.dirname(__file__), "bbprogram.py")


def program(mode, fmt="json", files=False, **options):
    cmd = [sys.executable, SCRIPT, mode, fmt] + (["{input}", "{output}"] if files else [])
    return Subprocess(cmd, io="files" if files else "stdin", format=fmt, **options)


def expected(x):
    return torch.stack([(x**2).sum(-1), x[:, 0]], -1)


def expected_vjp(x, v):
    g = 2 * x * v[:, :1]
    g[:, 0] += v[:, 1]
    return g


@pytest.mark.parametrize("fmt,files", [("json", False), ("npy", True), ("json", True)])
def test_normal_run_gives_values_and_zo_vjp_in_one_process_run(fmt, files):
    prog = program("ok", fmt, files)
    bb = BlackBox(prog, CGE(mu=1e-5, scheme="central"))
    x = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1]], dtype=torch.float64, requires_grad=True)
    out = bb(x)
    assert torch.allclose(out, expected(x.detach()))
    v = torch.tensor([[1.0, 0.5], [-2.0, 1.0], [0.3, 0.0]], dtype=torch.float64)
    out.backward(v)
    assert torch.allclose(x.grad, expected_vjp(x.detach(), v), atol=1e-8)
    assert bb.counts() == {"calls": 1, "points": 15, "failed_points": 0} and prog.attempts == 1


def test_max_points_splits_runs():
    prog = program("ok", max_points=4)
    bb = BlackBox(prog, CGE(mu=1e-5))
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    bb(x).sum().backward()
    assert bb.counts()["calls"] == 3 and prog.attempts == 3  # 9 points in runs of at most 4


def _step(bb, seed=0):
    """One hybrid training step (Linear -> black box -> loss -> Adam); returns net, optimizer, and the snapshot."""
    torch.manual_seed(seed)
    net = nn.Linear(2, 2).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]

    def run():
        opt.zero_grad()
        loss = bb(net(torch.ones(3, 2, dtype=torch.float64))).sum()
        loss.backward()
        opt.step()
        return loss

    return net, opt, before, run


def _untouched(net, opt, before):
    return (
        all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
        and all(p.grad is None for p in net.parameters())
        and opt.state_dict()["state"] == {}
    )


def test_timeout_kills_the_program_and_raises_before_any_change(tmp_path):
    prog = program("sleep", timeout=0.5, failed_dir=str(tmp_path))
    net, opt, before, run = _step(BlackBox(prog))
    with pytest.raises(ProgramError, match=r"bbprogram.py sleep json' failed after 1 attempt.*timed out after 0.5 s"):
        run()
    assert _untouched(net, opt, before)


def test_crash_names_program_reason_and_keeps_the_input(tmp_path):
    prog = program("crash", failed_dir=str(tmp_path), retries=1)
    net, opt, before, run = _step(BlackBox(prog))
    with pytest.warns(ProgramWarning, match="retrying"), pytest.raises(ProgramError) as info:
        run()
    message = str(info.value)
    assert "bbprogram.py crash" in message and "failed after 2 attempt(s)" in message
    assert "exit status 3" in message and "simulated solver blew up" in message
    kept = sorted(os.listdir(tmp_path))
    assert kept == ["failed-input-1.json", "failed-input-2.json"] and str(tmp_path) in message
    assert prog.attempts == 2 and _untouched(net, opt, before)


def test_nan_output_raises_naming_the_input_row():
    net, opt, before, run = _step(BlackBox(program("nan")))
    with pytest.raises(
        ProgramError, match=r"non-finite output at 1 of 9 query point.*perturbed point 2 of 2 .*, row 2, input \["
    ):
        run()
    assert _untouched(net, opt, before)


def test_malformed_output_is_a_failure():
    net, opt, before, run = _step(BlackBox(program("malformed")))
    with pytest.raises(ProgramError, match=r"malformed output \(JSONDecodeError"):
        run()
    assert _untouched(net, opt, before)


def test_flaky_program_recovers_with_retries(tmp_path):
    prog = program(f"flaky:{tmp_path / 'count'}", retries=2)
    net, opt, before, run = _step(BlackBox(prog))
    with pytest.warns(ProgramWarning, match="transient failure"):
        run()
    assert prog.attempts == 2 and prog.failed_attempts == 1
    assert not all(torch.equal(p, b) for p, b in zip(net.parameters(), before))  # the step went through


def test_propagate_and_omit_policies_for_a_crashing_run(tmp_path):
    # crashes when an input exceeds 1; runs of 2 points, so only the run holding the perturbed row fails
    x = torch.tensor([[0.2, 0.3], [0.9999995, 0.1]], dtype=torch.float64, requires_grad=True)
    for policy in ("propagate", "omit"):
        prog = program("crash-above:1.0", on_failure=policy, max_points=2, failed_dir=str(tmp_path))
        bb = BlackBox(prog, CGE(mu=1e-6))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = bb(x)
        assert any(issubclass(w.category, ProgramWarning) for w in caught)
        assert torch.allclose(out, expected(x.detach()))
        x.grad = None
        out.sum().backward()
        assert bb.counts()["failed_points"] == 2  # the run with perturbed point 1 (both rows) failed
        row0 = expected_vjp(x.detach(), torch.ones(2, 2, dtype=torch.float64))
        assert torch.isfinite(x.grad[:, 1]).all()
        if policy == "propagate":
            assert math.isnan(float(x.grad[0, 0])) and math.isnan(float(x.grad[1, 0]))
        else:
            assert torch.equal(x.grad[:, 0], torch.zeros(2, dtype=torch.float64))
            assert torch.allclose(x.grad[:, 1], row0[:, 1], atol=1e-5)


def test_policy_needs_a_known_output_shape_when_every_run_fails():
    bb = BlackBox(program("crash", on_failure="propagate"))
    with pytest.raises(ProgramError, match="output shape is unknown"):
        bb(torch.ones(2, 2))


BAD = [
    (dict(cmd=[]), TypeError, r"cmd must be a non-empty"),
    (dict(cmd="prog", io="pipe"), ValueError, r"Invalid io value"),
    (dict(cmd="prog", format="csv"), ValueError, r"Invalid format value"),
    (dict(cmd="prog", io="files"), ValueError, r"cmd: io='files' needs the placeholders"),
    (dict(cmd="prog", timeout=0), ValueError, r"Invalid timeout value"),
    (dict(cmd="prog", on_failure="retry"), ValueError, r"Invalid on_failure value"),
    (dict(cmd="prog", retries=1.5), ValueError, r"Invalid retries value"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD)
def test_bad_arguments_name_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Subprocess(**kwargs)


def test_npy_format_rejects_context():
    bb = BlackBox(program("ok", "npy"))
    with pytest.raises(ValueError, match="context: format='npy'"):
        bb(torch.ones(2, 2), torch.ones(2))


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as dead)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("retries", [0, 1])
def test_a_timeout_kills_the_whole_process_group_on_every_attempt(tmp_path, retries):
    pids = tmp_path / "pids"
    # the shell starts `sleep` as a child of its own, records its pid and waits: only the shell is the direct child
    prog = Subprocess(["sh", "-c", f"sleep 30 & echo $! >> {pids}; wait"], timeout=1, retries=retries)
    with (
        pytest.warns(ProgramWarning) if retries else contextlib.nullcontext(),
        pytest.raises(ProgramError, match="timed out"),
    ):
        prog(torch.zeros(1, 2))
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) == retries + 1
    assert all(_wait_dead(pid) for pid in started), "an orphaned child of the program is still running"


def test_children_left_running_by_a_successful_program_are_killed(tmp_path):
    pids = tmp_path / "pids"
    prog = Subprocess(["sh", "-c", f"sleep 30 & echo $! >> {pids}; echo '[1.5]'"], timeout=10)
    out = prog(torch.zeros(1, 2))
    assert out.tolist() == [1.5]
    assert _wait_dead(int(pids.read_text().split()[0]))


def test_no_temporary_file_is_left_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        ok = program("ok", files=True)
        ok(torch.ones(2, 2))
        bad = program("crash", files=True)
        with pytest.raises(ProgramError, match=r"first \[1, 1\]"):
            bad(torch.ones(2, 2))
        slow = program("sleep", timeout=0.3)
        with pytest.raises(ProgramError, match="timed out"):
            slow(torch.ones(2, 2))
    finally:
        tempfile.tempdir = None
    assert list(tmp_path.iterdir()) == []
