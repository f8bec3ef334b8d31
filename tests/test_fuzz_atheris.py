"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers that read untrusted bytes: the trace-context
headers, SQL normalization and the collector's span ingest. Each target runs in a subprocess for a bounded
number of inputs (AUTOINSTR_ATHERIS_RUNS, default 20000); atheris ends the process with a non-zero status
and the crashing input on the first exception a target does not expect. Skipped where atheris does not
install (it builds against libFuzzer: test.sh installs it where it can); hypothesis covers the same parsers
everywhere (test_fuzz_hostile_input.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("atheris")

RUNS = int(os.environ.get("AUTOINSTR_ATHERIS_RUNS", "20000"))

TARGETS = {
    # every header the propagators read, from one fuzzed input split into fields
    "headers": """
        from autoinstr.trace import propagation as prop

        NAMES = ("traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled",
                 "x-b3-flags", "x-b3-parentspanid")

        def target(data):
            fdp = atheris.FuzzedDataProvider(data)
            carrier = {name: fdp.ConsumeUnicodeNoSurrogates(128) for name in NAMES if fdp.ConsumeBool()}
            prop.parse_traceparent(carrier.get("traceparent", ""))
            prop.parse_tracestate(carrier.get("tracestate", ""))
            ctx = prop.extract(carrier)
            if ctx is not None:
                for value in prop.inject({}, ctx).values():
                    assert "\\r" not in value and "\\n" not in value, value
    """,
    # never raises; with obfuscation on, no quoted literal of the input survives
    "sql": """
        from autoinstr import sql

        def target(data):
            fdp = atheris.FuzzedDataProvider(data)
            dialect = fdp.PickValueInList(["generic", "sqlite", "postgresql", "mysql"])
            secret = "s%dx" % fdp.ConsumeIntInRange(10000, 99999)
            text = fdp.ConsumeUnicodeNoSurrogates(256)
            statement = "SELECT a FROM t WHERE b = '%s' AND %s" % (secret, text)
            summary = sql.summarize(statement, dialect, True)
            assert secret not in summary.text, (statement, summary.text)
    """,
    # bodies are stored valid or refused with the collector's own Rejected (a 4xx), never another exception
    "ingest": """
        from autoinstr.collector import ingest

        TYPES = ["application/msgpack", "application/json", "application/x-protobuf", "text/plain", None]

        def target(data):
            fdp = atheris.FuzzedDataProvider(data)
            content_type = fdp.PickValueInList(TYPES)
            otlp = fdp.ConsumeBool()
            body = fdp.ConsumeBytes(4096)
            try:
                if otlp:
                    ingest.decode_otlp_body(body, content_type)
                else:
                    ingest.decode_spans_body(body, content_type)
            except ingest.Rejected:
                pass
    """,
}

SCRIPT = """
import sys
import atheris

with atheris.instrument_imports():
{body}

atheris.Setup(sys.argv, target)
atheris.Fuzz()
"""


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_survives_coverage_guided_inputs(name, tmp_path):
    script = tmp_path / ("fuzz_%s.py" % name)
    script.write_text(SCRIPT.format(body=textwrap.indent(textwrap.dedent(TARGETS[name]), "    ")))
    proc = subprocess.run([sys.executable, str(script), "-runs=%d" % RUNS, "-max_len=4096", "-seed=1"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done %d runs" % RUNS in proc.stderr, proc.stderr[-1500:]
