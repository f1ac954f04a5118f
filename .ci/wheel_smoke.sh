#!/usr/bin/env bash
# The release path, as a user gets it: build the sdist and the wheel (the wheel from the sdist,
# so a file missing from the sdist shows), check their metadata, install the wheel
# NON-editable into a fresh venv, and there check that the kernels' sources were installed,
# that zeroth.ops builds/loads them (ZEROTH_OPS=cpp: a failed build is an error) and that a
# small CGE step runs. Installs only the built wheel file and its dependencies (torch pinned by
# constraints.txt): the bare name `zeroth` is never resolved from an index.
#
# The compiled kernels come from the cache (zeroth/ops/_build.py), whose key hashes every
# installed source file and the torch it compiles against (version and location: the smoke
# venv's torch lives in the dependency cache below), so the first run on a machine builds from
# the installed sources and later runs load that build; a file missing from the wheel changes
# the key and forces a new build. SMOKE_FRESH_BUILD=1 builds in an empty cache every time.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PY=${PYTHON:-$repo/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

SECONDS=0
phase() { echo "wheel smoke: $1 (${SECONDS} s)"; }
# Build from a copy of the files git tracks or would track, so nothing ignored (build/,
# *.egg-info, caches) goes in and nothing is written into the checkout.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src" 2>/dev/null || true
"$PY" -m build --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
phase "built the sdist and the wheel"
"$PY" -m twine check --strict "$work"/dist/*
wheel=$(ls "$work"/dist/zeroth_optim-*.whl)
sdist=$(ls "$work"/dist/zeroth_optim-*.tar.gz)
in_wheel=$("$PY" -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$wheel")
in_sdist=$("$PY" -c 'import sys, tarfile; print("\n".join(tarfile.open(sys.argv[1]).getnames()))' "$sdist")
for f in $(cd "$repo" && git ls-files zeroth/csrc); do  # every tracked kernel source ships in both
  grep -qx "$f" <<<"$in_wheel" || { echo "the wheel lacks $f"; exit 1; }
  grep -qx "zeroth_optim-[^/]*/$f" <<<"$in_sdist" || { echo "the sdist lacks $f"; exit 1; }
done

# The wheel's dependencies (torch: ~1 GB unpacked, 75 s to install here) are installed once
# per machine into a cache keyed by the constraints, the requirements and the Python version,
# and the fresh venv sees them through a .pth line; pip then finds them satisfied and installs
# the wheel alone. SMOKE_FULL_INSTALL=1 installs everything into the venv instead.
"$PY" -m venv "$work/venv"
site=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ "${SMOKE_FULL_INSTALL:-0}" != 1 ]; then
  key=$( (cat constraints.txt; sed -n '/^install_requires/,/^$/p' setup.cfg; "$PY" -V) | sha256sum | cut -c1-16)
  deps="${XDG_CACHE_HOME:-$HOME/.cache}/zeroth/smoke-deps/$key"
  if [ ! -d "$deps" ]; then
    mkdir -p "$(dirname "$deps")"
    tmp=$(mktemp -d "$deps.tmp.XXXX")
    "$work/venv/bin/python" -m pip install --quiet --target "$tmp" -c "$repo/constraints.txt" "$wheel"
    rm -rf "$tmp"/zeroth "$tmp"/zeroth_optim-*.dist-info "$tmp"/bin/zeroth
    mv -T "$tmp" "$deps" 2>/dev/null || rm -rf "$tmp"  # another run got there first
  fi
  echo "$deps" >"$site/_zeroth_smoke_deps.pth"
fi
"$work/venv/bin/python" -m pip install --quiet -c "$repo/constraints.txt" "$wheel"
phase "installed the wheel into a fresh venv"
if [ "${SMOKE_FRESH_BUILD:-0}" = 1 ]; then export ZEROTH_BUILD_DIR="$work/ops-cache"; fi

cd "$work"  # away from the checkout: `import zeroth` must find the installed copy
ZEROTH_OPS=cpp "$work/venv/bin/python" - "$repo" <<'PY'
import pathlib
import sys

import torch
import torch.nn.functional as F

import zeroth
from zeroth import CGE, Objective, ZOOptimizer, ops
from zeroth.ops import _build

repo = pathlib.Path(sys.argv[1]).resolve()
package = pathlib.Path(zeroth.__file__).resolve().parent
assert repo not in package.parents, f"zeroth imported from the checkout: {package}"
assert "site-packages" in package.parts, package
assert not list(package.parent.glob("__editable__*")), "an editable install is present"
assert _build.source_dir() == package / "csrc", _build.source_dir()
assert ops.backend() == "cpp", ops.backend()

# the compiled op runs and equals its reference
g = torch.zeros(5, dtype=torch.float64)
ops.scatter_scaled_add(g, torch.tensor([1, 3, 1]), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 0.5)
assert g.tolist() == [0.0, 2.0, 0.0, 1.0, 0.0], g

# one CGE step through the default evaluator: the gradient is autograd's, the step is taken
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
F.cross_entropy(model(x), y).backward()
want = [p.grad.clone() for p in model.parameters()]
model.zero_grad()
before = [p.detach().clone() for p in model.parameters()]
opt = ZOOptimizer(model.parameters(), lr=0.1, estimator=CGE(mu=1e-6), base="sgd", seed=0)
loss = opt.step(Objective(model, F.cross_entropy, x, y))
for p, w, b in zip(model.parameters(), want, before):
    torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(p.detach(), b - 0.1 * p.grad)
print(f"wheel smoke test: zeroth {zeroth.__version__} from {package}, ops {ops.backend()} "
      f"({_build.cache_root()}), CGE step loss {float(loss):.4f}: OK")
PY
phase "ran the smoke test"
"$work/venv/bin/zeroth" info | grep -q "ops backend: cpp"
phase "zeroth info reports the compiled backend; done"
