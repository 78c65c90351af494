"""schemathesis over the whole OpenAPI schema (REST and HF routes), in-process: generated
requests (valid and invalid, as admin and anonymously) never get a 5xx other than the
deliberate ones (501: Xet not implemented, 507: disk full)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from lorahive.registry.app import create_app
from lorahive.registry.service import RegistryService
from lorahive.registry.settings import Settings

EXAMPLES = int(os.environ.get("LORAHIVE_FUZZ_EXAMPLES", "10"))
ALLOWED_5XX = {501, 507}
_home = Path(tempfile.mkdtemp(prefix="lorahive-fuzz-"))
_settings = Settings(home=_home, database_url="", storage_url="")
_service = RegistryService(_settings)
ADMIN = _service.bootstrap_admin()
app = create_app(_settings, _service)
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
CALLS: dict[tuple[str, str], list[int]] = {}  # (method, path) -> statuses, per operation


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate], derandomize=True)


def fuzz(case) -> None:
    for headers in ({"Authorization": f"Bearer {ADMIN}"}, {}):
        r = case.call(headers=headers)
        CALLS.setdefault((case.operation.method.upper(), case.operation.path), []).append(
            r.status_code)
        assert r.status_code < 500 or r.status_code in ALLOWED_5XX, (
            case.operation.method.upper(), case.operation.path, r.status_code, r.text[:300])


def test_every_operation_without_server_errors():
    """Each operation of the schema in turn, in one test (its coverage check below does not
    depend on how a runner splits or orders tests); prints how many requests ran (quoted in
    docs/reliability.md)."""
    for result in schema.get_all_operations():
        @SETTINGS
        @given(case=result.ok().as_strategy())
        def run(case) -> None:
            fuzz(case)

        run()
    ops = {(m.upper(), p) for p, item in app.openapi()["paths"].items() for m in item}
    statuses = [c for calls in CALLS.values() for c in calls]
    print(f"\nfuzzed requests: {len(statuses)} over {len(CALLS)} operations, 5xx allowed: "
          f"{sum(1 for c in statuses if c >= 500)}")
    # every operation got generated requests from both identities
    assert set(CALLS) == ops, sorted(ops - set(CALLS))
    assert all(len(calls) >= 2 for calls in CALLS.values())
