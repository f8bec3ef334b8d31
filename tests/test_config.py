"""Configuration: every variable parsed, bad values warned about once and replaced, OTEL_* fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autoinstr import config
from autoinstr.config import Config, default_service_name, default_store_path


def warning_lines(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ defaults


def test_defaults_without_any_variable(capsys):
    c = Config({})
    assert c.enabled is False
    assert c.debug is False
    assert c.exporters == ("local",)
    assert c.store_path == default_store_path({})
    assert c.jsonl_path == "autoinstr-spans.jsonl"
    assert c.collector_url == "http://127.0.0.1:4990"
    assert c.otlp_endpoint == "http://127.0.0.1:4318"
    assert c.zipkin_url == "http://127.0.0.1:9411/api/v2/spans"
    assert c.statsd is None
    assert c.sample_rate == 1.0
    assert c.rate_limit == 0.0
    assert c.propagators == ("tracecontext", "baggage")
    assert c.disabled_integrations == frozenset()
    assert c.flush_interval == 1.0
    assert c.max_queue_spans == 10000
    assert c.shutdown_timeout == 2.0
    assert c.service_name  # the script name, never empty
    assert c.warnings == []
    assert warning_lines(capsys) == []


def test_every_variable_parsed(capsys):
    env = {
        "AUTOINSTR_ENABLED": "true",
        "AUTOINSTR_DEBUG": "1",
        "AUTOINSTR_SERVICE_NAME": "shop",
        "AUTOINSTR_EXPORTER": "jsonl, Console ,local",
        "AUTOINSTR_STORE": "/tmp/x/spans.db",
        "AUTOINSTR_JSONL_PATH": "/tmp/x/spans.jsonl",
        "AUTOINSTR_COLLECTOR_URL": "https://collector.example:4990/",
        "AUTOINSTR_OTLP_ENDPOINT": "http://otel:4318",
        "AUTOINSTR_ZIPKIN_URL": "http://zipkin:9411/api/v2/spans",
        "AUTOINSTR_STATSD": "statsd.local:8125",
        "AUTOINSTR_SAMPLE_RATE": "0.25",
        "AUTOINSTR_RATE_LIMIT": "50",
        "AUTOINSTR_PROPAGATORS": "b3,tracecontext,b3multi,baggage",
        "AUTOINSTR_DISABLED_INTEGRATIONS": "Flask, requests,,",
        "AUTOINSTR_FLUSH_INTERVAL": "0.5",
        "AUTOINSTR_MAX_QUEUE_SPANS": "2000",
        "AUTOINSTR_MAX_BATCH_SPANS": "100",
        "AUTOINSTR_SHUTDOWN_TIMEOUT": "3.5",
        "AUTOINSTR_MAX_ATTRIBUTES": "64",
        "AUTOINSTR_MAX_ATTRIBUTE_LENGTH": "1000",
        "AUTOINSTR_STORE_RETENTION_HOURS": "24",
        "AUTOINSTR_STORE_MAX_MB": "100",
    }
    c = Config(env)
    assert c.enabled is True
    assert c.debug is True
    assert c.service_name == "shop"
    assert c.exporters == ("jsonl", "console", "local")
    assert c.store_path == "/tmp/x/spans.db"
    assert c.jsonl_path == "/tmp/x/spans.jsonl"
    assert c.collector_url == "https://collector.example:4990"
    assert c.otlp_endpoint == "http://otel:4318"
    assert c.zipkin_url == "http://zipkin:9411/api/v2/spans"
    assert c.statsd == ("statsd.local", 8125)
    assert c.sample_rate == 0.25
    assert c.rate_limit == 50.0
    assert c.propagators == ("b3", "tracecontext", "b3multi", "baggage")
    assert c.disabled_integrations == frozenset({"flask", "requests"})
    assert c.flush_interval == 0.5
    assert c.max_queue_spans == 2000 and isinstance(c.max_queue_spans, int)
    assert c.max_batch_spans == 100
    assert c.shutdown_timeout == 3.5
    assert c.max_attributes == 64
    assert c.max_attribute_length == 1000
    assert c.store_retention_hours == 24.0
    assert c.store_max_mb == 100.0
    assert c.warnings == []
    assert warning_lines(capsys) == []
    names = [name for name, _ in c.items()]
    for var in ("AUTOINSTR_SERVICE_NAME", "AUTOINSTR_EXPORTER", "AUTOINSTR_STORE", "AUTOINSTR_JSONL_PATH",
                "AUTOINSTR_COLLECTOR_URL", "AUTOINSTR_OTLP_ENDPOINT", "AUTOINSTR_ZIPKIN_URL", "AUTOINSTR_STATSD",
                "AUTOINSTR_SAMPLE_RATE", "AUTOINSTR_RATE_LIMIT", "AUTOINSTR_PROPAGATORS",
                "AUTOINSTR_DISABLED_INTEGRATIONS", "AUTOINSTR_FLUSH_INTERVAL", "AUTOINSTR_MAX_QUEUE_SPANS",
                "AUTOINSTR_SHUTDOWN_TIMEOUT", "AUTOINSTR_DEBUG"):
        assert var in names
    assert dict(c.items())["AUTOINSTR_STATSD"] == "statsd.local:8125"


def test_blank_values_mean_default(capsys):
    c = Config({"AUTOINSTR_SAMPLE_RATE": "  ", "AUTOINSTR_EXPORTER": "", "AUTOINSTR_SERVICE_NAME": " "})
    assert c.sample_rate == 1.0
    assert c.exporters == ("local",)
    assert c.service_name == default_service_name()
    assert warning_lines(capsys) == []


def test_values_are_stripped():
    c = Config({"AUTOINSTR_SERVICE_NAME": "  shop  ", "AUTOINSTR_SAMPLE_RATE": " 0.5 "})
    assert c.service_name == "shop"
    assert c.sample_rate == 0.5


@pytest.mark.parametrize("value,expected", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True),
    ("0", False), ("false", False), ("False", False), ("no", False), ("off", False),
])
def test_booleans(value, expected, capsys):
    assert Config({"AUTOINSTR_DEBUG": value}).debug is expected
    assert warning_lines(capsys) == []


def test_store_path_default_follows_xdg(tmp_path):
    assert default_store_path({"XDG_DATA_HOME": str(tmp_path)}) == str(tmp_path / "autoinstr" / "spans.db")
    assert default_store_path({}).endswith(os.path.join(".local", "share", "autoinstr", "spans.db"))
    assert Config({"XDG_DATA_HOME": str(tmp_path)}).store_path == str(tmp_path / "autoinstr" / "spans.db")


def test_exporter_none_wins_and_duplicates_collapse():
    assert Config({"AUTOINSTR_EXPORTER": "local,none,jsonl"}).exporters == ("none",)
    assert Config({"AUTOINSTR_EXPORTER": "jsonl,jsonl,JSONL"}).exporters == ("jsonl",)
    assert Config({"AUTOINSTR_PROPAGATORS": "none"}).propagators == ("none",)


def test_statsd_ipv6_brackets():
    assert Config({"AUTOINSTR_STATSD": "[::1]:8125"}).statsd == ("::1", 8125)


# ---------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("var,value,attr,used,used_text", [
    ("AUTOINSTR_SAMPLE_RATE", "banana", "sample_rate", 1.0, "1.0"),
    ("AUTOINSTR_SAMPLE_RATE", "1.5", "sample_rate", 1.0, "1.0"),
    ("AUTOINSTR_SAMPLE_RATE", "-0.5", "sample_rate", 0.0, "0.0"),
    ("AUTOINSTR_SAMPLE_RATE", "nan", "sample_rate", 1.0, "1.0"),
    ("AUTOINSTR_SAMPLE_RATE", "inf", "sample_rate", 1.0, "1.0"),
    ("AUTOINSTR_RATE_LIMIT", "lots", "rate_limit", 0.0, "0.0"),
    ("AUTOINSTR_RATE_LIMIT", "-3", "rate_limit", 0.0, "0.0"),
    ("AUTOINSTR_FLUSH_INTERVAL", "soon", "flush_interval", 1.0, "1.0"),
    ("AUTOINSTR_FLUSH_INTERVAL", "0", "flush_interval", 0.01, "0.01"),
    ("AUTOINSTR_MAX_QUEUE_SPANS", "many", "max_queue_spans", 10000, "10000"),
    ("AUTOINSTR_MAX_QUEUE_SPANS", "1.5", "max_queue_spans", 10000, "10000"),
    ("AUTOINSTR_MAX_QUEUE_SPANS", "0", "max_queue_spans", 1, "1"),
    ("AUTOINSTR_SHUTDOWN_TIMEOUT", "forever", "shutdown_timeout", 2.0, "2.0"),
    ("AUTOINSTR_SHUTDOWN_TIMEOUT", "-1", "shutdown_timeout", 0.0, "0.0"),
    ("AUTOINSTR_DEBUG", "maybe", "debug", False, "False"),
    ("AUTOINSTR_ENABLED", "sure", "enabled", False, "False"),
    ("AUTOINSTR_EXPORTER", "kafka", "exporters", ("local",), "local"),
    ("AUTOINSTR_EXPORTER", "jsonl,kafka", "exporters", ("jsonl",), "jsonl"),
    ("AUTOINSTR_PROPAGATORS", "jaeger", "propagators", ("tracecontext", "baggage"), "tracecontext,baggage"),
    ("AUTOINSTR_PROPAGATORS", "b3,xray", "propagators", ("b3",), "b3"),
    ("AUTOINSTR_STATSD", "localhost", "statsd", None, "statsd disabled"),
    ("AUTOINSTR_STATSD", "localhost:99999", "statsd", None, "statsd disabled"),
    ("AUTOINSTR_STATSD", "localhost:port", "statsd", None, "statsd disabled"),
    ("AUTOINSTR_STATSD", ":8125", "statsd", None, "statsd disabled"),
    ("AUTOINSTR_COLLECTOR_URL", "collector:4990", "collector_url", "http://127.0.0.1:4990", "http://127.0.0.1:4990"),
    ("AUTOINSTR_OTLP_ENDPOINT", "ftp://x", "otlp_endpoint", "http://127.0.0.1:4318", "http://127.0.0.1:4318"),
])
def test_bad_value_warns_once_and_falls_back(var, value, attr, used, used_text, capsys):
    c = Config({var: value})
    assert getattr(c, attr) == used
    lines = warning_lines(capsys)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("autoinstr warning:")
    assert var in line
    assert value in line
    assert used_text in line.split("using", 1)[1]
    assert c.warnings and len(c.warnings) == 1


@pytest.mark.parametrize("value", ["inf", "1e400", "-inf"])
def test_infinite_integer_value_warns_and_falls_back(value, capsys):
    c = Config({"AUTOINSTR_MAX_QUEUE_SPANS": value})
    assert c.max_queue_spans in (1, 10000, 10_000_000)
    lines = warning_lines(capsys)
    assert len(lines) == 1 and "AUTOINSTR_MAX_QUEUE_SPANS" in lines[0]


def test_several_bad_values_one_line_each(capsys):
    Config({"AUTOINSTR_SAMPLE_RATE": "banana", "AUTOINSTR_DEBUG": "maybe", "AUTOINSTR_EXPORTER": "kafka"})
    lines = warning_lines(capsys)
    assert len(lines) == 3
    assert sorted(v for line in lines for v in ("AUTOINSTR_SAMPLE_RATE", "AUTOINSTR_DEBUG", "AUTOINSTR_EXPORTER")
                  if v in line) == ["AUTOINSTR_DEBUG", "AUTOINSTR_EXPORTER", "AUTOINSTR_SAMPLE_RATE"]


def test_warnings_can_be_collected_silently(capsys):
    c = Config({"AUTOINSTR_SAMPLE_RATE": "banana"}, emit_warnings=False)
    assert c.sample_rate == 1.0
    assert len(c.warnings) == 1 and "AUTOINSTR_SAMPLE_RATE" in c.warnings[0]
    assert warning_lines(capsys) == []


# --------------------------------------------------------------------------------- OTEL_* names


def test_otel_fallbacks_honoured(capsys):
    c = Config({
        "OTEL_SERVICE_NAME": "otel-svc",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318/",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
        "OTEL_PROPAGATORS": "b3multi,tracecontext",
    })
    assert c.service_name == "otel-svc"
    assert c.exporters == ("otlp",)
    assert c.otlp_endpoint == "http://otel-collector:4318"
    assert c.sample_rate == 0.1
    assert c.propagators == ("b3multi", "tracecontext")
    assert c.sources["AUTOINSTR_SERVICE_NAME"] == "OTEL_SERVICE_NAME"
    assert c.sources["AUTOINSTR_SAMPLE_RATE"] == "OTEL_TRACES_SAMPLER_ARG"
    assert warning_lines(capsys) == []


def test_otel_exporter_alias():
    assert Config({"OTEL_TRACES_EXPORTER": "otlp_proto_http"}).exporters == ("otlp",)


def test_autoinstr_wins_over_otel():
    c = Config({
        "OTEL_SERVICE_NAME": "otel-svc", "AUTOINSTR_SERVICE_NAME": "mine",
        "OTEL_TRACES_EXPORTER": "otlp", "AUTOINSTR_EXPORTER": "jsonl",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1", "AUTOINSTR_OTLP_ENDPOINT": "http://b:2",
        "OTEL_TRACES_SAMPLER_ARG": "0.1", "AUTOINSTR_SAMPLE_RATE": "0.9",
        "OTEL_PROPAGATORS": "b3", "AUTOINSTR_PROPAGATORS": "tracecontext",
    })
    assert c.service_name == "mine"
    assert c.exporters == ("jsonl",)
    assert c.otlp_endpoint == "http://b:2"
    assert c.sample_rate == 0.9
    assert c.propagators == ("tracecontext",)
    assert c.sources["AUTOINSTR_SERVICE_NAME"] == "AUTOINSTR_SERVICE_NAME"


def test_bad_otel_value_names_the_otel_variable(capsys):
    c = Config({"OTEL_TRACES_SAMPLER_ARG": "half"})
    assert c.sample_rate == 1.0
    lines = warning_lines(capsys)
    assert len(lines) == 1 and "OTEL_TRACES_SAMPLER_ARG" in lines[0] and "half" in lines[0]


# ------------------------------------------------------------------------------ service name


@pytest.mark.parametrize("argv,expected", [
    (["python3", "app.py"], "app"),
    (["/usr/bin/python3", "/srv/www/app.py", "--port", "80"], "app"),
    (["python", "./worker.pyw"], "worker"),
    (["/venv/bin/python", "/venv/bin/gunicorn", "app:app"], "gunicorn"),
    (["python", "-m", "pkg.mod"], "pkg.mod"),
    (["python", "-m", "pkg.mod", "--flag", "x"], "pkg.mod"),
    (["python", "-mpkg.mod"], "pkg.mod"),
    (["python", "-u", "-X", "dev", "-W", "ignore", "app.py"], "app"),
    (["python", "-c", "print(1)"], "python"),
    (["python", "-c"], "python"),
    (["python"], "python"),
    (["python", "-"], "python"),
    (["python", "/srv/pkg/__main__.py"], "pkg"),
])
def test_default_service_name(argv, expected):
    """argv is the interpreter's whole command line (sys.orig_argv): at start-up sys.argv does not yet show
    the module of `python -m pkg.mod`."""
    assert default_service_name(argv) == expected


def test_default_service_name_of_this_process():
    name = default_service_name()
    assert name and "/" not in name


def _service_name_at_startup(tmp_path, args):
    """The service name the agent reads when it loads at interpreter start (AUTOINSTR_ENABLED=true)."""
    pkg = tmp_path / "svcpkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("import autoinstr.config as c\nprint(c.get().service_name)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOINSTR_", "OTEL_"))}
    env.update(AUTOINSTR_ENABLED="true", AUTOINSTR_EXPORTER="none")
    out = subprocess.run([sys.executable] + args, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_service_name_at_startup_for_a_script(tmp_path):
    assert _service_name_at_startup(tmp_path, ["svcpkg/mod.py", "arg"]) == "mod"


def test_service_name_at_startup_for_a_module(tmp_path):
    # at start-up, sys.argv of `python -m svcpkg.mod first-arg` is ['-m', 'first-arg']: not the service name
    assert _service_name_at_startup(tmp_path, ["-m", "svcpkg.mod", "first-arg"]) == "svcpkg.mod"


def test_service_name_at_startup_for_c(tmp_path):
    code = "import autoinstr.config as c; print(c.get().service_name)"
    assert _service_name_at_startup(tmp_path, ["-c", code, "arg"]) == "python"


# ----------------------------------------------------------------------------- parsed once


def test_get_parses_once_and_reset_rereads(clean_env, capsys):
    saved = config._current
    try:
        clean_env.setenv("AUTOINSTR_SERVICE_NAME", "one")
        config._current = None
        first = config.get()
        clean_env.setenv("AUTOINSTR_SERVICE_NAME", "two")
        assert config.get() is first
        assert config.get().service_name == "one"
        assert config.reset({"AUTOINSTR_SERVICE_NAME": "three"}).service_name == "three"
        assert config.get().service_name == "three"
        clean_env.setenv("AUTOINSTR_SAMPLE_RATE", "banana")
        config._current = None
        config.get()
        config.get()
        assert len(warning_lines(capsys)) == 1  # warnings printed once, at the first parse
    finally:
        config._current = saved
