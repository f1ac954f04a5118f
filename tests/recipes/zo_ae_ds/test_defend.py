"""``zeroth defend``: a short digits run beats no defense; the config and the command reject bad arguments."""

import pytest

from zeroth.cli import main
from zeroth.recipes.zo_ae_ds import defend
from zeroth.recipes.zo_ae_ds.defend import DefendConfig, run


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
    from zeroth.recipes.zo_ae_ds.defend import Report, Row

    report = Report(DefendConfig(), [Row("no defense", [0.5]), Row("FO-DS", [0.7])], [], 0.0)
    assert report.row("FO-DS").accuracy == [0.7]
    with pytest.raises(KeyError, match=r"no row named 'FO-AE-DS'.*'no defense', 'FO-DS'"):
        report.row("FO-AE-DS")
