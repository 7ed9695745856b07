"""Every alert of the monitoring role names a runbook that exists (runbooks/<runbook_id>.md)."""

from __future__ import annotations

from conftest import ROOT, alert_rules


def test_every_runbook_id_has_a_runbook():
    wanted: dict[str, list[str]] = {}
    for rule in alert_rules():
        wanted.setdefault(rule["labels"]["runbook_id"], []).append(rule["alert"])
    missing = {rid: alerts for rid, alerts in sorted(wanted.items()) if not (ROOT / "runbooks" / f"{rid}.md").is_file()}
    assert not missing, "alerts whose runbook is missing (runbooks/<id>.md): " + "; ".join(
        f"{rid}.md for {', '.join(alerts)}" for rid, alerts in missing.items()
    )
