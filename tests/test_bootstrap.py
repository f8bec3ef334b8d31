"""The bootstrap's lazy pipeline: made at the first finished span; a failure to make it drops spans (one warning),
never raises into the app. (Loading the agent at start-up is tested in integration/test_launcher.py.)"""

from __future__ import annotations

import pytest

from autoinstr import bootstrap
from autoinstr.trace.span import Sink, _discard


@pytest.fixture
def lazy_sink(monkeypatch):
    monkeypatch.setattr(bootstrap, "_pipeline", None)
    monkeypatch.setattr(Sink, "submit", bootstrap._first_submit)
    monkeypatch.setattr(Sink, "submit_one", bootstrap._first_submit_one)
    yield


def test_the_first_finished_span_makes_the_pipeline_and_is_queued(lazy_sink, monkeypatch):
    made = []

    class Recorder:
        def __init__(self):
            self.one, self.many = [], []

        def submit(self, spans):
            self.many.append(spans)

        def submit_one(self, span):
            self.one.append(span)

    def make():
        made.append(Recorder())
        monkeypatch.setattr(Sink, "submit", made[-1].submit)
        monkeypatch.setattr(Sink, "submit_one", made[-1].submit_one)
        return made[-1]

    monkeypatch.setattr(bootstrap, "_get_pipeline", make)
    Sink.submit_one("a")
    Sink.submit_one("b")  # (now the recorder's own method: made once)
    Sink.submit(["c", "d"])
    assert len(made) == 1 and made[0].one == ["a", "b"] and made[0].many == [["c", "d"]]


def test_a_pipeline_that_cannot_be_made_drops_spans_with_one_warning(lazy_sink, monkeypatch, capsys):
    def broken():
        raise OSError("no room")

    monkeypatch.setattr(bootstrap, "_get_pipeline", broken)
    Sink.submit_one("a")  # (no exception reaches the app)
    Sink.submit(["b"])
    assert Sink.submit_one is _discard and Sink.submit is _discard
    err = capsys.readouterr().err
    assert err.count("could not be set up") == 1 and "OSError: no room" in err


def test_the_pipeline_is_made_once_and_takes_over_the_sink(monkeypatch):
    monkeypatch.setattr(bootstrap, "_pipeline", None)
    monkeypatch.setattr(Sink, "submit", Sink.submit)
    monkeypatch.setattr(Sink, "submit_one", Sink.submit_one)
    first = bootstrap._get_pipeline()
    assert bootstrap._get_pipeline() is first
    assert Sink.submit == first.submit and Sink.submit_one == first.submit_one
