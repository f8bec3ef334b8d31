"""The optional C speedups (autoinstr/_speedups.c), compiled when the wheel is built, where a C compiler and
Python's headers are found; without them the wheel is pure Python and the agent does the same work in Python.

hatchling runs SpeedupsBuildHook (pyproject.toml: tool.hatch.build.targets.wheel.hooks.custom).
`python hatch_build.py` builds the module in place, next to its source, for the tests run from the source tree.
AUTOINSTR_NO_SPEEDUPS=1 at build time leaves it out.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import Any, Dict

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "autoinstr", "_speedups.c")


def compile_speedups(folder: str) -> str:
    """Compile and link the module into `folder`; returns its path (CalledProcessError/OSError on failure)."""
    target = os.path.join(folder, "_speedups" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    link = shlex.split(sysconfig.get_config_var("LDSHARED") or "cc -shared")
    pic = shlex.split(sysconfig.get_config_var("CCSHARED") or "-fPIC")
    command = link + pic + ["-O2", "-I", sysconfig.get_paths()["include"], SOURCE, "-o", target]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    return target


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script
    BuildHookInterface = object  # type: ignore[misc,assignment]


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[misc,valid-type]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: Dict[str, Any]) -> None:
        if self.target_name != "wheel" or os.environ.get("AUTOINSTR_NO_SPEEDUPS"):
            return
        self._build_folder = tempfile.mkdtemp(prefix="autoinstr-speedups-")
        try:
            target = compile_speedups(self._build_folder)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            sys.stderr.write("autoinstr: the optional C speedups were not built, the agent runs in pure Python (%s)\n"
                             % detail.strip().splitlines()[-1:])
            return
        build_data["force_include"][target] = "autoinstr/" + os.path.basename(target)
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: Dict[str, Any], artifact_path: str) -> None:
        # the module is in the wheel now; without this every build left its folder in the temp directory
        folder = getattr(self, "_build_folder", None)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    try:
        print(compile_speedups(os.path.join(HERE, "autoinstr")))
    except subprocess.CalledProcessError as exc:
        sys.exit("compiling autoinstr/_speedups.c failed:\n%s" % exc.stderr)
