"""Build glue that pyproject.toml cannot express: the cffi extension
netfence._fastpath (c_ext/build_fastpath.py) and the static hook launcher
(c_ext/hook_launcher.c, installed as netfence/_hook_launcher when this machine can
link statically; docs/hook.md says what it protects against)."""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class build_py_with_launcher(build_py):
    def run(self):
        super().run()
        sys.path.insert(0, os.path.join(HERE, "c_ext"))
        from build_fastpath import LAUNCHER_NAME, build_launcher
        target = os.path.join(self.build_lib, "netfence", LAUNCHER_NAME)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        build_launcher(target)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        target = os.path.join(self.build_lib, "netfence", "_hook_launcher")
        return outputs + ([target] if os.path.exists(target) else [])


setup(
    cffi_modules=["c_ext/build_fastpath.py:ffibuilder"],
    cmdclass={"build_py": build_py_with_launcher},
)
