"""Where the data files shipped with the code are: Avro schemas, migrations, templates, static files.

Found through importlib.resources, so a checkout and an installed wheel read the same files, and nothing
is looked up relative to a repository root. pip unpacks wheels into plain directories, so the answer is a
real directory that Alembic, Jinja and Starlette can use.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def package_dir(package: str, *parts: str) -> Path:
    """The directory `parts` inside the importable package `package` (which ships it as package data)."""
    found = resources.files(package)
    for part in parts:
        found = found / part
    if not isinstance(found, Path):
        raise RuntimeError(f"{package}/{'/'.join(parts)} is not on the filesystem ({found!r}): install the wheel "
                           "unpacked (pip install), not as a zip")
    return found
