"""`python -m jobs segtrain --check-enabled`: the switch `make all` asks before segtrain and segment."""

from __future__ import annotations

from jobs import stage_main
from tests.conftest import REPO

main = stage_main("segtrain")


def test_check_enabled_reports_the_switch_in_the_exit_code_and_runs_nothing() -> None:
    config = ["--config", str(REPO / "conf" / "demo.yaml"), "--check-enabled"]
    assert main(config) == 1  # off by default
    assert main([*config, "segtrain.enabled=true"]) == 0
    assert main([*config, "segtrain.enabeld=true"]) == 2  # a typo is an error, not "off"
