"""Build hook: copy what the commands need at run time into the wheel.

``treadmill demo`` reads ``config/demo.yaml`` and ``treadmill scenario`` the files in
``scenarios/``; both folders sit beside the packages in the source tree. This copies them
into ``controller/bundled/`` of the build, where :mod:`controller.resources` finds them
after a normal (non-editable) ``pip install``. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUNDLED = {
    "config": ("demo.yaml", "monitor-demo.yaml", "treadmill.yaml"),
    "scenarios": tuple(sorted(p.name for p in (HERE / "scenarios").glob("*.yaml"))),
}


class BuildPyWithBundledFiles(build_py):
    """``build_py`` that also copies ``config/`` and ``scenarios/`` files into the build."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "controller" / "bundled"
        for folder, names in BUNDLED.items():
            (target / folder).mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy2(HERE / folder / name, target / folder / name)


setup(cmdclass={"build_py": BuildPyWithBundledFiles})
