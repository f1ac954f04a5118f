"""A tiny external program for the Subprocess tests: f(x) = [Σ x², x₀] per point.

Usage: bbprogram.py MODE [FORMAT] [INPUT OUTPUT]   (stdin/stdout when no paths are given)
MODE: ok | sleep | crash | nan | malformed | flaky:<counter file> | crash-above:<v>
"""

import io
import json
import math
import sys
import time


def f(point):
    flat = list(_flatten(point))
    return [sum(v * v for v in flat), flat[0]]


def _flatten(p):
    if isinstance(p, list):
        for q in p:
            yield from _flatten(q)
    else:
        yield p


def main():
    mode = sys.argv[1]
    fmt = sys.argv[2] if len(sys.argv) > 2 else "json"
    paths = sys.argv[3:5]
    raw = open(paths[0], "rb").read() if paths else sys.stdin.buffer.read()
    if fmt == "npy":
        import numpy as np

        points = np.load(io.BytesIO(raw)).tolist()
    else:
        points = json.loads(raw)["inputs"]
    if mode == "sleep":
        time.sleep(30)
    if mode == "crash":
        sys.stderr.write("simulated solver blew up\n")
        sys.exit(3)
    if mode.startswith("crash-above:") and max(_flatten(points)) > float(mode.split(":")[1]):
        sys.stderr.write("input out of range\n")
        sys.exit(4)
    if mode.startswith("flaky:"):
        counter = mode.split(":", 1)[1]
        try:
            n = int(open(counter).read())
        except FileNotFoundError:
            n = 0
        open(counter, "w").write(str(n + 1))
        if n == 0:
            sys.stderr.write("transient failure\n")
            sys.exit(1)
    out = [f(p) for p in points]
    if mode == "nan":
        out[-1][0] = math.nan
    if mode == "malformed":
        data = b"this is not json"
    elif fmt == "npy":
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.array(out))
        data = buf.getvalue()
    else:
        data = json.dumps({"outputs": out}).encode()
    if paths:
        open(paths[1], "wb").write(data)
    else:
        sys.stdout.buffer.write(data)


if __name__ == "__main__":
    main()
