"""``Subprocess``: an external program as a black box, one process run per call.

Data exchange (``io`` × ``format``):

* ``io="stdin"`` — the input goes to the program's stdin, the output is read from its stdout;
* ``io="files"`` — ``{input}`` and ``{output}`` in ``cmd`` are replaced by paths in a fresh
  temporary folder; the program reads the first and writes the second;
* ``format="json"`` — input ``{"inputs": [...points...], "context": [...]}`` (``context`` only
  when the black box passes context arguments); output a JSON array with one entry per point,
  or ``{"outputs": [...]}``. ``NaN`` / ``Infinity`` are accepted as Python's json writes them;
* ``format="npy"`` — input one ``.npy`` array of the points, output one ``.npy`` array.

A non-zero exit status, a time-out, or output that does not parse is a failure: retried
``retries`` times, then handled by ``on_failure`` (see :mod:`zeroth.blackbox.program`). The
message names the command, the reason (exit status and the tail of stderr) and the failing
input (its shape and first values; the whole payload is saved in ``failed_dir`` when one is
given, for a rerun).

Every run starts the program in a session (process group) of its own; when the run ends —
normally, by a time-out, an error or an interrupt — the whole group is killed, so a program
that starts children (``sh -c "..."``, MPI launchers, solver wrappers) leaves none behind.
The temporary folder of ``io="files"`` is removed whatever happens.
"""

from __future__ import annotations

import io as _io
import json
import math
import numbers
import os
import shlex
import signal
import subprocess
import tempfile
import threading
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .program import Program

IO_MODES = ("stdin", "files")
FORMATS = ("json", "npy")


def _tail(data: bytes, limit: int = 400) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _to_list(c: Any) -> Any:
    if isinstance(c, Tensor):
        return c.detach().cpu().tolist()
    if isinstance(c, np.ndarray):
        return c.tolist()
    return c


class Subprocess(Program):
    """Run ``cmd`` once per call, exchanging points through stdin/stdout or files (JSON or .npy).

    The protocol with ``format="json"``: the program reads one JSON object (stdin, or the file
    ``{input}`` with ``io="files"``), ``{"inputs": [point, ...]}`` — one entry per query point
    as nested lists (``batched=True``: a stack ``(K, *point_shape)``; ``batched=False``: the
    black box's forward input as is) — with ``"context": [...]`` added when the black box is
    called with context arguments. It writes (stdout, or the file ``{output}``) a JSON array
    with one entry per point, or ``{"outputs": [...]}`` holding it; ``NaN``/``Infinity`` as
    Python's json writes them are read back. With ``format="npy"`` it reads one ``.npy`` array
    of the points and writes one ``.npy`` array (no context). A non-zero exit status, a
    time-out or output that does not parse is a failure (``retries``, then ``on_failure``).

    A minimal program, ``f(x₀, x₁) = (x₀·x₁, x₁²)`` per point::

        import json, sys
        request = json.load(sys.stdin)                   # {"inputs": [[x0, x1], ...]}
        outputs = [[x0 * x1, x1 ** 2] for x0, x1 in request["inputs"]]
        json.dump({"outputs": outputs}, sys.stdout)      # or json.dump(outputs, sys.stdout)

    saved as ``prog.py`` and used as ``BlackBox(Subprocess([sys.executable, "prog.py"]), CGE(mu=1e-6))``
    (the guide's page on black boxes runs it).

    Args:
        cmd: the command, a list of arguments or a string split like a shell would.
        io: ``"stdin"`` or ``"files"`` (``cmd`` must then contain ``{input}`` and ``{output}``).
        format: ``"json"`` or ``"npy"``.
        timeout: seconds a run may take before it is killed (None: no limit).
        retries, on_failure, batched, max_points, name: see :class:`~zeroth.blackbox.Program`
            (``batched=True`` by default: one run evaluates a whole stack of points).
        cwd, env: working directory and environment of the program.
        dtype: dtype of the returned tensor (default: the input's).
        failed_dir: folder where the input of a failed run is saved for a rerun (default None: not saved,
            the error shows its shape and first values).

    Attributes:
        num_failed_inputs: inputs saved in ``failed_dir`` so far.

    Raises:
        TypeError: ``cmd`` is not a non-empty string or sequence of strings, or ``dtype`` is
            not a floating ``torch.dtype``.
        ValueError: ``io`` or ``format`` is not one of the two, ``io="files"`` without the
            ``{input}``/``{output}`` placeholders, a ``timeout`` that is not a number > 0, or an
            invalid ``max_points``/``retries``/``on_failure``.
    """

    def __init__(
        self,
        cmd: Union[str, Sequence[str]],
        *,
        io: str = "stdin",
        format: str = "json",
        timeout: Optional[float] = None,
        retries: int = 0,
        on_failure: str = "raise",
        batched: bool = True,
        max_points: Optional[int] = None,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        dtype: Optional[torch.dtype] = None,
        failed_dir: Optional[str] = None,
        name: Optional[str] = None,
    ):
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        if not isinstance(cmd, (list, tuple)) or not cmd or not all(isinstance(a, str) for a in cmd):
            raise TypeError("cmd must be a non-empty string or sequence of strings")
        if io not in IO_MODES:
            raise ValueError(f"Invalid io value: {io!r} (expected 'stdin' or 'files')")
        if format not in FORMATS:
            raise ValueError(f"Invalid format value: {format!r} (expected 'json' or 'npy')")
        if io == "files" and not (any("{input}" in a for a in cmd) and any("{output}" in a for a in cmd)):
            raise ValueError("cmd: io='files' needs the placeholders {input} and {output} in the command")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, numbers.Real)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ValueError(f"Invalid timeout value: {timeout!r} (timeout must be a number > 0 or None)")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        super().__init__(
            name=name or shlex.join(cmd), batched=batched, max_points=max_points, on_failure=on_failure, retries=retries
        )
        self.cmd = list(cmd)
        self.io, self.format = io, format
        self.timeout = None if timeout is None else float(timeout)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.dtype = dtype
        self.failed_dir = failed_dir
        self.num_failed_inputs = 0

    # -- payloads -------------------------------------------------------------------------
    def _encode(self, x: Tensor, context: Sequence[Any]) -> bytes:
        if self.format == "npy":
            buf = _io.BytesIO()
            np.save(buf, x.detach().cpu().numpy(), allow_pickle=False)
            return buf.getvalue()
        payload = {"inputs": x.detach().cpu().tolist()}
        if context:
            payload["context"] = [_to_list(c) for c in context]
        return json.dumps(payload).encode()

    def _decode(self, data: bytes) -> np.ndarray:
        try:
            if self.format == "npy":
                out = np.load(_io.BytesIO(data), allow_pickle=False)
            else:
                out = json.loads(data.decode("utf-8"))
                if isinstance(out, dict):
                    out = out["outputs"]
                out = np.asarray(out, dtype=np.float64)
        except Exception as err:
            raise ValueError(
                f"malformed output ({type(err).__name__}: {err}); output began {_tail(data[:200])!r}"
            ) from None
        if not np.issubdtype(out.dtype, np.number):
            raise ValueError(f"malformed output: values of dtype {out.dtype}")
        return out

    # -- running ----------------------------------------------------------------------------
    def __call__(self, x: Tensor, *context: Any) -> Tensor:
        """One run (with retries) of the program on ``x``, as for any :class:`~zeroth.blackbox.Program`.

        Raises:
            ValueError: context arguments with ``format="npy"`` (it carries a single array).
            zeroth.blackbox.ProgramError: every attempt failed.
        """
        if context and self.format == "npy":
            raise ValueError("context: format='npy' carries a single array; use format='json' with context arguments")
        return super().__call__(x, *context)

    def run(self, x: Tensor, *context: Any) -> Tensor:
        """One process run: encode ``x`` (and the context), run ``cmd``, decode its output.

        Returns:
            The outputs as a tensor on ``x``'s device, dtype ``dtype`` or ``x``'s.

        Raises:
            RuntimeError: a non-zero exit status (the message has the tail of stderr).
            TimeoutError: the run took longer than ``timeout``.
            ValueError: output that does not parse, or no output file (``io="files"``).
            OSError: the command could not be started.

        With ``failed_dir`` the error is re-raised as the same type with the saved input's path
        added to its message.
        """
        payload = self._encode(x, context)
        try:
            out = self._run_process(payload)
        except Exception as err:
            if self.failed_dir is None:  # the program's error names the input's first values
                raise
            raise type(err)(f"{err}; input kept in {self._keep(self.failed_dir, payload)}") from None
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=x.device, dtype=self.dtype or x.dtype)

    def _run_process(self, payload: bytes) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="zeroth-bb-") as work:
            suffix = "." + self.format
            paths = {"input": os.path.join(work, "input" + suffix), "output": os.path.join(work, "output" + suffix)}
            if self.io == "files":
                with open(paths["input"], "wb") as f:
                    f.write(payload)
                cmd = [a.replace("{input}", paths["input"]).replace("{output}", paths["output"]) for a in self.cmd]
                stdin = None
            else:
                cmd, stdin = self.cmd, payload
            stdout, stderr, returncode = run_in_own_group(cmd, stdin, self.timeout, self.cwd, self.env)
            if returncode != 0:
                raise RuntimeError(f"exit status {returncode}; stderr: {_tail(stderr) or '(empty)'}")
            if self.io == "files":
                if not os.path.exists(paths["output"]):
                    raise ValueError("malformed output: the program wrote no output file")
                with open(paths["output"], "rb") as f:
                    data = f.read()
            else:
                data = stdout
            return self._decode(data)

    def _keep(self, failed_dir: str, payload: bytes) -> str:
        """Save the input of a failed run in ``failed_dir`` and return its path (named in the error)."""
        os.makedirs(failed_dir, exist_ok=True)
        self.num_failed_inputs += 1
        path = os.path.join(failed_dir, f"failed-input-{self.num_failed_inputs}.{self.format}")
        with open(path, "wb") as f:
            f.write(payload)
        return path

    def __repr__(self) -> str:
        return (
            f"Subprocess({self.name!r}, io={self.io!r}, format={self.format!r}, timeout={self.timeout}, "
            f"retries={self.retries}, on_failure={self.on_failure!r}, max_points={self.max_points})"
        )


def run_in_own_group(
    cmd: Sequence[str],
    stdin: Optional[bytes],
    timeout: Optional[float],
    cwd: Optional[str],
    env: Optional[Mapping[str, str]],
):
    """Run ``cmd`` in a new session and return ``(stdout, stderr, returncode)``.

    The run ends when the program (the direct child) exits, or after ``timeout`` seconds with a
    ``TimeoutError``. Either way every process of the program's group is then killed (SIGKILL)
    and the child reaped, so nothing outlives the run — not even a background child that still
    holds the output pipes open.

    Args:
        cmd: the command and its arguments (no shell).
        stdin: bytes written to the program's stdin (None: stdin is ``/dev/null``).
        timeout: seconds before the program is killed (None: no limit).
        cwd: working directory (None: the current one).
        env: environment (None: inherited).

    Returns:
        ``(stdout, stderr, returncode)``: bytes, bytes, int (negative: killed by that signal).

    Raises:
        TimeoutError: the program did not exit within ``timeout`` seconds.
        OSError: the command could not be started (e.g. ``FileNotFoundError``).
    """
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    chunks: dict = {"stdout": [], "stderr": []}

    def pump(stream, key):
        for block in iter(lambda: stream.read(65536), b""):
            chunks[key].append(block)

    def feed():
        assert proc.stdin is not None and stdin is not None  # feed runs only when stdin was given (PIPE)
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except (BrokenPipeError, OSError):  # the program exited without reading all of it
            pass

    threads = [
        threading.Thread(target=pump, args=(proc.stdout, "stdout"), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True),
    ]
    if stdin is not None:
        threads.append(threading.Thread(target=feed, daemon=True))
    for t in threads:
        t.start()
    try:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"timed out after {timeout:g} s (the program's process group was killed)") from None
    finally:
        _kill_group(proc)
        for t in threads:
            t.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:  # both are pipes (stdout=PIPE, stderr=PIPE)
                stream.close()
    return b"".join(chunks["stdout"]), b"".join(chunks["stderr"]), proc.returncode


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the session ``proc`` leads (children included) and reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
