"""Create (once) the Prefect automation that marks silent flow runs Crashed.

A flow run whose process dies at once (worker killed, machine lost) cannot report its end:
Prefect would show it Running for ever. Flow runs started by the worker send a heartbeat
every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (prefect.yaml sets 30); this automation,
as Prefect documents for self-hosted servers, marks a run Crashed when no heartbeat or final
state follows the last heartbeat within ``--within`` seconds. compare-heads then closes that
run's MLflow runs as FAILED at the next flow run. Idempotent: an existing automation of the
same name and window is left as it is; one with another window is replaced.

The automation watches every flow run on the server that sends heartbeats, so the window
must exceed the slowest heartbeat: Prefect's default frequency is 180 s, hence the default
window of 240 s (our deployments send one every 30 s).

    .venv/bin/python scripts/zombie_automation.py [--within 240]
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

NAME = "compare-heads: crash zombie flow runs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--within", type=int, default=240, help="seconds without a heartbeat")
    args = parser.parse_args()
    try:
        existing = Automation.read(name=NAME)
    except ValueError:
        existing = None  # not found
    if existing is not None:
        if existing.trigger.within == timedelta(seconds=args.within):
            print(f"automation {NAME!r} exists")
            return
        existing.delete()
    Automation(
        name=NAME,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=args.within),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {args.within} s: the process running it died.",
            )
        ],
    ).create()
    print(f"automation {NAME!r} created")


if __name__ == "__main__":
    main()
