"""autoinstr's start-up hook: `autoinstr-run` puts this folder first on PYTHONPATH, so every Python
process the command starts (workers and subprocesses too) runs it.

It loads the agent, then runs the user's own sitecustomize (the next one on sys.path), which this
module would otherwise hide. An interpreter without autoinstr installed simply runs without the agent.
"""


def _autoinstr_start() -> None:
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        from autoinstr import bootstrap
    except ImportError:
        if os.environ.get("AUTOINSTR_DEBUG", "").lower() in ("1", "true", "yes", "on"):
            sys.stderr.write("autoinstr debug: not installed for %s; running without the agent\n" % sys.executable)
    else:
        bootstrap.load()
    _run_user_sitecustomize(here)


def _run_user_sitecustomize(here: str) -> None:
    import os
    import sys
    from importlib.machinery import PathFinder

    try:  # importlib.util would cost milliseconds of start-up (contextlib, collections...)
        from importlib._bootstrap import module_from_spec
    except ImportError:  # pragma: no cover
        from importlib.util import module_from_spec

    def same(p: str) -> bool:
        try:
            return os.path.abspath(p or os.getcwd()) == here
        except OSError:
            return False

    path = [p for p in sys.path if not same(p)]
    spec = PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        # site.py's own behaviour for a failing sitecustomize: report it, carry on
        import traceback

        sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n")
        traceback.print_exc()


_autoinstr_start()
