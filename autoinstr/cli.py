"""Command line: the Python launcher (`autoinstr run`) and `autoinstr` (spans, report, collector, ui).

The launcher replaces itself with the user's command (exec): same pid, stdin/stdout/stderr, signals and
exit code, with the start-up hook's folder first on PYTHONPATH so that every Python process the command
starts loads the agent. `autoinstr-run` (scripts/autoinstr-run) is its shell twin for the common case, which
costs no interpreter start; it hands everything else (options such as --info, errors, an unusual install) to
`autoinstr run`. This one imports almost nothing, to keep its own start-up short.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

RUN_USAGE = """usage: autoinstr-run [--service NAME] [--info] COMMAND [ARGS...]

Run COMMAND with the autoinstr agent loaded in every Python process it starts.

options:
  --service NAME   service name for the spans (sets AUTOINSTR_SERVICE_NAME)
  --info           print the effective configuration, integrations and exporters, then exit
  --version        print the version and exit
  -h, --help       show this help and exit

Configuration comes from AUTOINSTR_* environment variables; see the README.
"""


def hook_dir() -> str:
    """The installed sitecustomize_hook folder (it ships in the wheel beside the autoinstr package)."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(package_dir), "sitecustomize_hook")


def launch_env(environ: Dict[str, str], service: Optional[str] = None) -> Dict[str, str]:
    env = dict(environ)
    hook = hook_dir()
    existing = env.get("PYTHONPATH", "")
    # keep the user's entries exactly, empty ones too (Python reads them as the current folder)
    parts = [p for p in existing.split(os.pathsep) if not p or os.path.abspath(p) != hook] if existing else []
    env["PYTHONPATH"] = os.pathsep.join([hook] + parts)
    if service:
        env["AUTOINSTR_SERVICE_NAME"] = service
    return env


def run_main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    service: Optional[str] = None
    info = False
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt == "--":
            break
        if opt in ("-h", "--help"):
            sys.stdout.write(RUN_USAGE)
            return 0
        if opt == "--version":
            from autoinstr import __version__

            sys.stdout.write("autoinstr %s\n" % __version__)
            return 0
        if opt == "--info":
            info = True
        elif opt == "--service" or opt.startswith("--service="):
            if "=" in opt:
                service = opt.split("=", 1)[1]
            elif args:
                service = args.pop(0)
            else:
                sys.stderr.write("autoinstr-run: --service needs a NAME\n")
                return 2
        else:
            sys.stderr.write("autoinstr-run: unknown option %s\n%s" % (opt, RUN_USAGE))
            return 2
    if info:
        from autoinstr.info import print_info

        env = launch_env(dict(os.environ), service)
        try:
            return print_info(env, args)
        except BrokenPipeError:  # `autoinstr-run --info | head`
            _quiet_stdout()
            return 0
    if not args:
        sys.stderr.write(RUN_USAGE)
        return 2
    env = launch_env(dict(os.environ), service)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(args[0], args, env)
    except FileNotFoundError:
        sys.stderr.write("autoinstr-run: command not found: %s\n" % args[0])
        return 127
    except PermissionError:
        sys.stderr.write("autoinstr-run: permission denied: %s\n" % args[0])
        return 126
    except OSError as exc:
        sys.stderr.write("autoinstr-run: cannot run %s: %s\n" % (args[0], exc))
        return 126
    return 0  # not reached: exec replaced this process


# ------------------------------------------------------------------------------------ autoinstr

def main(argv: Optional[List[str]] = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["run"]:  # the arguments are the command's own: argparse must not read them
        return run_main(args_in[1:])
    import argparse

    from autoinstr import __version__

    parser = argparse.ArgumentParser(prog="autoinstr", description="autoinstr: read what the agent measured.")
    parser.add_argument("--version", action="version", version="autoinstr %s" % __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run a command with the agent loaded: autoinstr run [--service NAME] COMMAND "
                               "(what autoinstr-run does)")

    p_spans = sub.add_parser("spans", help="print stored spans")
    _store_args(p_spans)
    p_spans.add_argument("--json", action="store_true", help="one span record (JSON) per line")
    p_spans.add_argument("--limit", type=int, default=0, help="at most this many spans (oldest first)")
    p_spans.add_argument("--trace", help="only this trace id")
    p_spans.add_argument("--service", help="only this service")

    p_report = sub.add_parser("report", help="latency per operation, and the slowest traces as waterfalls")
    _store_args(p_report)
    p_report.add_argument("--traces", type=int, default=3, help="how many of the slowest traces to draw")
    p_report.add_argument("--since", type=float, default=0, help="only spans of the last N minutes")
    p_report.add_argument("--width", type=int, default=40, help="width of the waterfall bars")

    p_coll = sub.add_parser("collector", help="receive spans from agents (msgpack, OTLP/HTTP) into a store")
    _store_args(p_coll)
    p_coll.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p_coll.add_argument("--port", type=int, default=4990, help="port to listen on (default: 4990)")
    p_coll.add_argument("--token", help="bearer token agents must send (default: AUTOINSTR_COLLECTOR_TOKEN)")
    p_coll.add_argument("--threads", "--workers", type=int, default=4, help="request threads (default: 4)")
    p_coll.add_argument("--max-body-mb", type=float, default=None,
                        help="largest request body, also decompressed (default: AUTOINSTR_COLLECTOR_MAX_BODY_MB, 16)")

    p_ui = sub.add_parser("ui", help="the web UI over a store: services, endpoints, traces, search, SQL, service map")
    _store_args(p_ui)
    p_ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p_ui.add_argument("--port", type=int, default=4991, help="port to listen on (default: 4991)")
    p_ui.add_argument("--threads", type=int, default=4, help="request threads (default: 4)")

    args = parser.parse_args(args_in)
    if args.command is None:
        parser.print_help()
        return 2
    from autoinstr.store import StoreError

    try:
        if args.command == "spans":
            return _cmd_spans(args)
        if args.command == "report":
            from autoinstr.report import print_report

            return print_report(_store_path(args), args.traces, args.since, args.width)
        if args.command == "collector":
            return _cmd_collector(args)
        if args.command == "ui":
            return _cmd_ui(args)
    except StoreError as exc:
        sys.stderr.write("autoinstr: %s\n" % exc)
        return 1
    except BrokenPipeError:  # `autoinstr spans | head`
        _quiet_stdout()
        return 0
    parser.print_help()
    return 2


def _quiet_stdout() -> None:
    """After a reader closed the pipe: no second error as the interpreter flushes stdout at exit."""
    try:
        sys.stdout.close()
    except Exception:
        pass


def _store_args(p: Any) -> None:
    p.add_argument("--store", help="the SQLite store (default: AUTOINSTR_STORE, then %s)" % _default_store_hint())


def _default_store_hint() -> str:
    from autoinstr.config import default_store_path

    return default_store_path()


def _store_path(args: Any) -> str:
    from autoinstr.config import default_store_path

    return args.store or os.environ.get("AUTOINSTR_STORE") or default_store_path()


def _cmd_spans(args: Any) -> int:
    import json

    from autoinstr.store import Store

    store = Store(_store_path(args), create=False, readonly=True)
    out = sys.stdout
    for rec in store.spans(limit=args.limit or None, trace_id=args.trace, service=args.service):
        if args.json:
            out.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
        else:
            out.write("%s %s %-8s %10.3f ms %-5s %s %s\n" % (
                rec["trace_id"], rec["span_id"], rec["kind"], rec["duration_ns"] / 1e6, rec["status"],
                rec["service"], rec["name"]))
    out.flush()
    return 0


def _cmd_collector(args: Any) -> int:
    from autoinstr.collector.serve import serve
    from autoinstr.config import Config

    cfg = Config()  # the collector's own settings (token, body limit, store retention), one warning per bad value
    max_body_mb = cfg.collector_max_body_mb if args.max_body_mb is None else args.max_body_mb
    if not 0 < max_body_mb <= 1024:
        sys.stderr.write("autoinstr collector: --max-body-mb must be in (0, 1024]\n")
        return 2
    if not 0 <= args.port < 65536:
        sys.stderr.write("autoinstr collector: --port must be in 0..65535\n")
        return 2
    return serve(args.host, args.port, _store_path(args), token=args.token or cfg.collector_token or None,
                 threads=args.threads, max_body=int(max_body_mb * 1024 * 1024),
                 retention_hours=cfg.store_retention_hours, store_max_mb=cfg.store_max_mb)


def _cmd_ui(args: Any) -> int:
    from autoinstr.ui.serve import serve

    if not 0 <= args.port < 65536:
        sys.stderr.write("autoinstr ui: --port must be in 0..65535\n")
        return 2
    return serve(args.host, args.port, _store_path(args), threads=max(1, args.threads))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
