"""``zeroth defend``: a short digits run beats no defense; the config and the command reject bad arguments."""

import json

import pytest
import torch

from zeroth.cli import main
from zeroth.recipes.zo_ae_ds import defend
from zeroth.recipes.zo_ae_ds.certify import ABSTAIN, Certificate
from zeroth.recipes.zo_ae_ds.defend import DefendConfig, Report, Row, run


@pytest.mark.slow  # about a minute: trains f, the AE and six denoisers, then certifies
def test_short_digits_run_certifies_beyond_no_defense(tmp_path, capsys):
    config = DefendConfig(
        estimator="cge",
        q=(24,),
        classifier_epochs=10,
        ae_epochs=40,
        epochs=3,
        n=200,
        num_certify=60,
        progress=False,
        out=str(tmp_path / "defend.png"),
    )
    report = run(config)
    out = capsys.readouterr().out
    r = config.radii.index(0.25)
    zo = report.row("ZO-AE-DS CGE")
    assert zo.accuracy[r] > report.row("no defense").accuracy[r] + 0.3
    assert zo.accuracy[r] > report.row("RS of f alone").accuracy[r]
    assert zo.queries_per_step == 64 * 25 and zo.train_queries == 1347 + 3 * 21 * 64 * 25
    names = ["no defense", "RS of f alone", "FO-DS", "FO-AE-DS", "ZO-DS RGE q=24", "ZO-AE-DS CGE"]
    assert [row.name for row in report.rows] == names
    assert all(name in out for name in names) and "r=0.25" in out and "goal  ZO-AE-DS CGE within 2 points" in out
    assert (tmp_path / "defend.png").stat().st_size > 1000


def test_default_rows_and_q():
    config = DefendConfig()
    assert config.latent_dim == 24 and config.q == (2, 6, 24) and config.radii == (0.0, 0.125, 0.25, 0.375, 0.5)
    names = [name for name, _ in defend._plan(config)]
    assert names == [
        "FO-DS",
        "FO-AE-DS",
        "ZO-DS RGE q=24",
        "ZO-AE-DS RGE q=2",
        "ZO-AE-DS RGE q=6",
        "ZO-AE-DS RGE q=24",
        "ZO-AE-DS CGE",
    ]


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(dataset="mnist"), "dataset"),
        (dict(dataset="cifar10"), "data_dir"),
        (dict(sigma=-0.25), "sigma"),
        (dict(estimator="spsa"), "estimator"),
        (dict(q=(0,)), "q"),
        (dict(q=()), "q"),
        (dict(radii=(-1.0,)), "radii"),
        (dict(n=0), "n"),
        (dict(epochs=1.5), "epochs"),
        (dict(alpha=0.5), "alpha"),
        (dict(mu=0.0), "mu"),
    ],
)
def test_config_names_the_bad_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DefendConfig(**kwargs)


def test_command_parses_into_a_config(monkeypatch):
    seen = {}
    monkeypatch.setattr(defend, "run", lambda config: seen.setdefault("config", config))
    assert (
        main(
            [
                "defend",
                "--sigma",
                "0.5",
                "--estimator",
                "rge",
                "--q",
                "3,12",
                "--radii",
                "0,0.5",
                "--n",
                "500",
                "--epochs",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    c = seen["config"]
    assert (c.sigma, c.estimator, c.q, c.radii, c.n, c.epochs, c.progress) == (
        0.5,
        "rge",
        (3, 12),
        (0.0, 0.5),
        500,
        2,
        False,
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["defend", "--dataset", "cifar10"], "data_dir"),
        (["defend", "--epochs", "0"], "epochs"),
        (["defend", "--q", "2,x"], "--q"),
        (["defend", "--estimator", "newton"], "--estimator"),
    ],
)
def test_command_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_report_row_names_the_unknown_name_and_the_known_ones():
    report = Report(DefendConfig(), [Row("no defense", [0.5]), Row("FO-DS", [0.7])], [], 0.0)
    assert report.row("FO-DS").accuracy == [0.7]
    with pytest.raises(KeyError, match=r"no row named 'FO-AE-DS'.*'no defense', 'FO-DS'"):
        report.row("FO-AE-DS")


def _no_training(*args, **kwargs):
    raise AssertionError("run() went past the checkpoint check")


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_checkpoint_dir_records_the_training_config_and_refuses_another(tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    first = DefendConfig(epochs=1, progress=False, checkpoint_dir=str(folder))
    defend.check_checkpoint_dir(first)
    record = json.loads((folder / defend.CHECKPOINT_CONFIG).read_text())
    assert record == {
        "dataset": "digits",
        "sigma": 0.25,
        "estimator": "all",
        "q": [2, 6, 24],
        "mu": 5e-3,
        "lr": 1e-3,
        "latent_dim": 24,
        "epochs": 1,
        "classifier_epochs": 30,
        "ae_epochs": 150,
        "batch_size": 64,
        "seed": 0,
    }
    (folder / "classifier.pt").write_bytes(b"trained with d_z = 24")
    before = _snapshot(folder)
    # the same training arguments resume; certification, device, plot and bars may change
    defend.check_checkpoint_dir(first)
    defend.check_checkpoint_dir(
        DefendConfig(
            epochs=1, n=50, n0=10, num_certify=5, radii=(0.0,), out="x.png", progress=True, checkpoint_dir=str(folder)
        )
    )
    monkeypatch.setattr(defend, "_load", _no_training)
    with pytest.raises(ValueError, match=r"latent_dim \(--latent-dim\): 24 in the checkpoints, 12 now") as err:
        run(DefendConfig(latent_dim=12, epochs=1, progress=False, checkpoint_dir=str(folder)))
    assert repr(str(folder)) in str(err.value) and "q (--q)" in str(err.value)  # q defaults from d_z too
    with pytest.raises(ValueError, match="checkpoint_dir") as err:
        run(DefendConfig(sigma=0.5, epochs=3, progress=False, checkpoint_dir=str(folder)))
    message = str(err.value)
    assert "sigma (--sigma): 0.25 in the checkpoints, 0.5 now" in message
    assert "epochs (--epochs): 1 in the checkpoints, 3 now" in message and "latent_dim" not in message
    assert _snapshot(folder) == before


def test_checkpoint_dir_with_checkpoints_but_no_record_is_refused(tmp_path):
    (tmp_path / "classifier.pt").write_bytes(b"old run")
    with pytest.raises(ValueError, match=f"{defend.CHECKPOINT_CONFIG}.*new directory"):
        defend.check_checkpoint_dir(DefendConfig(checkpoint_dir=str(tmp_path)))
    assert _snapshot(tmp_path) == {"classifier.pt": b"old run"}
    (tmp_path / defend.CHECKPOINT_CONFIG).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a readable configuration record"):
        defend.check_checkpoint_dir(DefendConfig(checkpoint_dir=str(tmp_path)))


def test_command_refuses_a_checkpoint_dir_of_another_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(defend, "run", _no_training)
    defend.check_checkpoint_dir(DefendConfig(checkpoint_dir=str(tmp_path)))
    with pytest.raises(SystemExit) as exit_:
        main(["defend", "--latent-dim", "12", "--checkpoint-dir", str(tmp_path), "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "latent_dim (--latent-dim): 24 in the checkpoints, 12 now" in err and str(tmp_path) in err


def _certificates(predictions, label=0):
    return [Certificate(p, 0.0 if p == ABSTAIN else 0.3, 0.6, 50, 100, label) for p in predictions]


def test_rows_and_table_report_abstentions():
    rows = [
        Row("no defense", [0.5, 0.0]),
        Row("FO-DS", [0.5, 0.25], certificates=_certificates([0, ABSTAIN, ABSTAIN, 1])),
    ]
    assert (rows[0].abstentions, rows[0].abstention_rate) == (None, None)
    assert (rows[1].abstentions, rows[1].abstention_rate) == (2, 0.5)
    report = Report(DefendConfig(radii=(0.0, 0.25)), rows, [], 1.0, chance=0.1)
    lines = defend.format_report(report).splitlines()
    title = next(line for line in lines if line.startswith("method"))
    fo = next(line for line in lines if line.startswith("FO-DS"))
    assert "abstain" in title and fo.split()[-3:] == ["50.0", "50.0", "25.0"]
    assert next(line for line in lines if line.startswith("no defense")).split()[-3:] == ["—", "50.0", "0.0"]


@pytest.mark.parametrize(
    "zo,fo,ae,expected",
    [
        ([0.10, 0.10], [0.10, 0.10], 0.80, "not measurable at this budget (FO-AE-DS at r=0 10.0 %: not above chance"),
        ([0.90, 0.50], [0.91, 0.52], 0.10, "not measurable at this budget (f(Dec(Enc(x))) 10.0 %"),
        ([0.20, 0.10], [0.20, 0.10], 0.20, "not measurable"),  # 20 % < 10 % + 2 standard errors (13.4 points)
        ([0.90, 0.50], [0.91, 0.52], 0.80, "met (largest shortfall 2.0 points at r=0.5)"),
        ([0.90, 0.50], [0.91, 0.55], None, "missed (largest shortfall 5.0 points at r=0.5)"),
    ],
)
def test_fo_gap_verdict_is_not_measurable_at_chance(zo, fo, ae, expected):
    line = defend.fo_gap_verdict(zo, fo, (0.0, 0.5), chance=0.1, ae_accuracy=ae, images=20)
    assert line.startswith("goal  ZO-AE-DS CGE within 2 points of FO-AE-DS at every radius: ")
    assert expected in line
    # without a chance level, the plain comparison (both at chance tie: "met")
    assert "met" in defend.fo_gap_verdict([0.1], [0.1], (0.0,), chance=None)


def test_chance_margin_is_two_standard_errors_and_at_least_five_points():
    assert defend.chance_margin(0.1, 20) == pytest.approx(2 * (0.09 / 20) ** 0.5)
    assert defend.chance_margin(0.1, 10_000) == 0.05


def test_goals_use_the_verdict_on_the_report():
    rows = [Row("FO-AE-DS", [0.1, 0.1]), Row("ZO-AE-DS CGE", [0.1, 0.1])]
    report = Report(DefendConfig(radii=(0.0, 0.25), num_certify=20), rows, [], 1.0, chance=0.1, ae_accuracy=0.1)
    assert any("not measurable at this budget" in line for line in defend.goals(report))
    report.chance = None
    assert any("within 2 points of FO-AE-DS at every radius: met" in line for line in defend.goals(report))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["defend", "--device", "foo"], "argument --device: invalid device 'foo'"),
        (["defend", "--device", "cuda:99"], "argument --device: 'cuda:99' is not available"),
        (
            ["defend", "--data-dir", "/nonexistent/zeroth"],
            "argument --data-dir: '/nonexistent/zeroth' is not a directory",
        ),
        (["defend", "--dataset", "cifar10", "--data-dir", "."], "argument --data-dir: no CIFAR-10 python batches"),
    ],
)
def test_command_names_a_bad_device_or_data_dir(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(defend, "run", _no_training)
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_command_accepts_cuda_exactly_when_torch_has_it(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(defend, "run", lambda config: seen.setdefault("config", config))
    if torch.cuda.is_available():
        assert main(["defend", "--device", "cuda", "--quiet"]) == 0 and seen["config"].device == "cuda"
    else:
        with pytest.raises(SystemExit):
            main(["defend", "--device", "cuda", "--quiet"])
        assert (
            "argument --device: 'cuda' is not available: this machine has 0 CUDA device(s)" in capsys.readouterr().err
        )
