"""Every parameter is declared once, in RunConfig: the flow, the CLI and prefect.yaml agree."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import yaml

from gap_models.config import RunConfig

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


def test_prefect_yaml_parameters_are_runconfig_defaults():
    document = yaml.safe_load((REPO / "prefect.yaml").read_text())
    defaults = RunConfig().model_dump()
    for deployment in document["deployments"]:
        assert deployment["parameters"] == defaults, deployment["name"]


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
    assert 'COMPARE_HEADS_WORK_POOL="$WORK_POOL" "$VENV_BIN/prefect" --no-prompt deploy' in services
