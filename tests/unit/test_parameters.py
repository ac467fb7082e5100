"""Every parameter is declared once, in RunConfig: the flow, the CLI and prefect.yaml agree."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest
import yaml

from gap_models.architecture import HEAD_NAMES
from gap_models.config import DEEP_RECIPE, RunConfig

REPO = Path(__file__).resolve().parents[2]
FIELDS = list(RunConfig.model_fields)


def test_flow_parameters_are_runconfig_fields_defaulting_to_it():
    from flows.compare_heads import compare_heads

    signature = inspect.signature(compare_heads.fn)
    assert list(signature.parameters) == FIELDS
    # None means "RunConfig's default": the flow holds no default of its own.
    assert {p.default for p in signature.parameters.values()} == {None}


def test_cli_run_options_are_runconfig_fields_with_its_help_and_defaults():
    from flows.cli import run

    signature = inspect.signature(run)
    hints = typing.get_type_hints(run, include_extras=True)
    assert list(signature.parameters) == FIELDS
    for name, parameter in signature.parameters.items():
        assert parameter.default is None, name
        option = hints[name].__metadata__[0]
        field = RunConfig.model_fields[name]
        assert option.help == field.description, name
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        assert option.show_default == shown, name


def test_prefect_yaml_parameters_are_runconfig_defaults(monkeypatch):
    """As services.sh deploys them (COMPARE_HEADS_SOURCE unset: its default); the scheduled
    deployment retrains on the source it was deployed with."""
    from prefect.utilities.templating import apply_values

    document = yaml.safe_load((REPO / "prefect.yaml").read_text())
    defaults = RunConfig().model_dump()
    monkeypatch.setenv("COMPARE_HEADS_SOURCE", defaults["source"])
    flows = [
        d for d in document["deployments"] if d["entrypoint"].startswith("flows/compare_heads")
    ]
    expected = {
        "compare-heads": defaults,
        "compare-heads-scheduled": {**defaults, "promote": True, "max_age_days": 28},
        "compare-heads-deep": {**defaults, **DEEP_RECIPE},  # the studies' strongest model
    }
    assert sorted(d["name"] for d in flows) == sorted(expected)
    for deployment in flows:
        parameters = apply_values(deployment["parameters"], {}, False)
        assert parameters == expected[deployment["name"]], deployment["name"]
    RunConfig(**expected["compare-heads-deep"])  # valid as it stands
    monkeypatch.setenv("COMPARE_HEADS_SOURCE", "../shared/data/photos.zip")
    named = {d["name"]: apply_values(d["parameters"], {}, False) for d in flows}
    on_demand, scheduled = named["compare-heads"], named["compare-heads-scheduled"]
    assert scheduled["source"] == "../shared/data/photos.zip"
    assert on_demand["source"] == defaults["source"]
    services = (REPO / "scripts" / "services.sh").read_text()
    assert 'COMPARE_HEADS_SOURCE="${COMPARE_HEADS_SOURCE:-tfds:cats_vs_dogs}"' in services


def test_every_field_says_what_it_is():
    for name, field in RunConfig.model_fields.items():
        assert field.description, name


def test_deployments_target_the_pool_the_worker_polls(monkeypatch):
    """prefect.yaml takes the pool from COMPARE_HEADS_WORK_POOL, as `prefect deploy` fills
    it in (what services.sh exports, the same variable its worker polls)."""
    from prefect.utilities.templating import apply_values

    monkeypatch.setenv("COMPARE_HEADS_WORK_POOL", "team-pool")
    document = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for deployment in document["deployments"]:
        filled = apply_values(deployment, {}, False)
        assert filled["work_pool"]["name"] == "team-pool", deployment["name"]
    services = (REPO / "scripts" / "services.sh").read_text()
    assert 'WORK_POOL="${COMPARE_HEADS_WORK_POOL:-compare-heads-pool}"' in services
    assert 'COMPARE_HEADS_WORK_POOL="$WORK_POOL" \\' in services


def test_the_cli_reports_every_bad_value_naming_its_parameter_and_shows_choices():
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(
        app, ["run", "--split", "80,10,x", "--epochs", "0", "--recipe", "fast", "--head", "mlp"]
    )
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert "epochs: Input should be greater than or equal to 1" in lines
    assert (
        "heads: unknown ['mlp']; allowed are ['fc', 'fc_dropout', 'gap', 'avgpool', 'fc_matched', 'gap_matched']"
        in lines
    )
    assert any(line.startswith("split.2: Input should be a valid integer") for line in lines)
    assert "recipe: Input should be 'faithful', 'improved' or 'converge'" in lines
    assert "errors.pydantic.dev" not in result.output
    help_text = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["run", "--help"]).output
    assert (
        "[faithful|improved|converge]" in help_text and "[auto|mixed_bfloat16|float32]" in help_text
    )


def test_the_flow_schema_offers_runconfig_choices_limits_and_help():
    from prefect.utilities.callables import parameter_schema

    from flows.compare_heads import compare_heads

    properties = parameter_schema(compare_heads.fn).model_dump()["properties"]
    assert list(properties) == FIELDS
    for name, field in RunConfig.model_fields.items():
        assert properties[name]["description"] == field.description, name
    recipe = properties["recipe"]["anyOf"][0]
    assert recipe["enum"] == ["faithful", "improved", "converge"]
    assert properties["heads"]["anyOf"][0]["items"]["enum"] == list(HEAD_NAMES)
    assert properties["backbone"]["anyOf"][0]["enum"] == ["article", "deep"]
    assert properties["epochs"]["anyOf"][0]["minimum"] == 1


def test_the_test_processes_keep_each_group_together(request):
    """Under pytest-xdist (--dist loadgroup, pyproject's addopts) every test carries its
    group (tests/conftest.py) in its id; pytest 9.2 silently dropped it (xdist#1386), which
    would start the shared e2e services once per test process."""
    if not request.config.getoption("loadgroup", default=False):
        return  # a plain pytest run: nothing is distributed
    assert request.node.nodeid.endswith("@tests/unit/test_parameters.py"), request.node.nodeid


@pytest.mark.parametrize(
    "setting", ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "PREFECT_SERVER_ANALYTICS_ENABLED"]
)
def test_the_cli_shows_no_download_progress_bars_and_sends_no_telemetry_unless_asked(
    setting, monkeypatch
):
    """`compare-heads predict` after `make up` printed MLflow's 'Downloading artifacts' bars
    between its answers; `study run`'s own Prefect server logged failed telemetry. A user's
    own setting still wins."""
    import os

    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv(setting, "true")
    CliRunner().invoke(app, ["run", "--epochs", "0"])  # refused: the callback ran first
    assert os.environ[setting] == "true"
    monkeypatch.delenv(setting)
    refused = CliRunner().invoke(app, ["run", "--epochs", "0"])
    assert refused.exit_code == 2
    assert os.environ[setting] == "false"
