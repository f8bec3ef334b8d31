"""statsd request metrics through a framework integration, sampled or not: the route of an unsampled
request is known too (Django, in-process; see test_django_unit)."""

from __future__ import annotations

import pytest

pytest.importorskip("django")

from test_django_unit import _handler, call, configured, patched  # noqa: E402,F401
from test_metrics import counters, on, receiver  # noqa: E402,F401

from autoinstr.export import statsd  # noqa: E402
from autoinstr.trace.span import Sampling  # noqa: E402


@pytest.mark.parametrize("ratio", [1.0, 0.0])
def test_django_routes_of_sampled_and_unsampled_requests(patched, on, collected, ratio):  # noqa: F811
    Sampling.configure(ratio)
    handler = _handler()
    for pk in (1, 2, 3):
        call(handler, "/users/%d/" % pk)
    call(handler, "/articles/2024/")
    call(handler, "/missing/")
    statsd.flush()
    c = counters(on.lines())
    p = "t.svc.http.server.requests."
    assert c[p + "users_int_pk.GET.2xx"] == 3
    assert c[p + "articles_P_year_0-9_4.GET.2xx"] == 1
    assert c[p + "missing.GET.4xx"] == 1, c
    assert len(collected) == (5 if ratio else 0)
