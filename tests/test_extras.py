"""The `dev` extra (what `make test` and CI install) holds every optional dependency the code uses."""

import configparser
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _extras():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    section = cfg["options.extras_require"]
    return {name: {line.strip() for line in section[name].splitlines() if line.strip()} for name in section}


def test_dev_installs_every_other_extra():
    extras = _extras()
    missing = {name: sorted(reqs - extras["dev"]) for name, reqs in extras.items() if name != "dev"}
    assert not any(missing.values()), f"in an extra but not in dev: {missing}"


def test_no_extra_names_the_bare_zeroth_distribution():
    for name, reqs in _extras().items():
        for req in reqs:
            assert not req.lower().split("[")[0].split(">")[0].split("=")[0].strip() == "zeroth", (name, req)
