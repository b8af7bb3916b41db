"""The wheel holds everything the code reads at run time, and the code finds it there.

Builds the wheel from the checkout's files (as `python -m pip wheel --no-deps . -w dist` does from a fresh
clone), opens it with zipfile and checks that every file of every shipped package is inside (Avro schemas,
migrations, templates, static files: a new data file left out of package-data fails here). Then imports
the unpacked wheel from an empty directory and checks that the codec, the migrations and the operator
page read their files from the wheel, not from the checkout. .ci/wheel-check installs it for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Top-level directories the wheel ships: [tool.setuptools.packages.find] include, e.g. "ledger*" -> ledger/.
SHIPPED = sorted({pattern.split(".")[0].rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]})
# Files inside those directories that nothing reads at run time (said why), so the wheel leaves them out.
NOT_RUN_TIME = {
    "schemas/compose/README.md": "the Compose Specification schema's provenance",
    "schemas/compose/compose-spec.json": "read by tests/unit/test_compose_file.py only",
}
BUILD_TIMEOUT_S = 240


def _source_files() -> list[str]:
    """What a fresh clone holds, plus local changes: tracked and untracked-but-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    return sorted(path for path in listed if path and (ROOT / path).is_file())


def _shipped_files() -> set[str]:
    return {path for path in _source_files()
            if path.split("/")[0] in SHIPPED and "__pycache__" not in path and path not in NOT_RUN_TIME}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for path in _source_files():  # a copy: no build/ leftovers of earlier builds can slip into the wheel
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, source / path)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                            "--no-deps", str(source), "-w", str(dist)],
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    (found,) = dist.glob("payout_ledger-*.whl")
    return found


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_every_file_of_every_shipped_package_is_in_the_wheel(wheel_names: set[str]) -> None:
    expected = _shipped_files()
    assert {"schemas/avro/Envelope.avsc", "schemas/avro/PaymentCompleted.avsc", "schemas/__init__.py",
            "projections/migrations/env.py", "api/templates/page.html", "api/static/page.css"} <= expected
    assert len([path for path in expected if path.startswith("projections/migrations/versions/")]) >= 10
    missing = sorted(expected - wheel_names)
    assert missing == [], f"read at run time but not in the wheel (add them to package-data): {missing}"


def test_the_wheel_holds_the_packages_and_the_command_and_nothing_else(wheel: Path, wheel_names: set[str]) -> None:
    tops = {PurePosixPath(name).parts[0] for name in wheel_names}
    (info,) = {top for top in tops if top.endswith(".dist-info")}
    assert tops - {info} == set(SHIPPED)  # no tests/, bench/, docs/, monitoring/
    assert not [name for name in wheel_names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in wheel_names if name in NOT_RUN_TIME]
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert re.search(r"^ledger = commands\.main:cli$", entry_points, re.M)


def test_the_unpacked_wheel_reads_its_own_files_from_an_empty_directory(wheel: Path, tmp_path: Path) -> None:
    unpacked, empty = tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    probe = """
import json, sys
import ledger
from alembic.script import ScriptDirectory
from api.page import STATIC_DIR, TEMPLATE_DIR, TEMPLATES
from ledger.codec import DEFAULT_SCHEMA_DIR, EventCodec, encoded_schemas
from runtime.database import MIGRATIONS_DIR, alembic_config

script = ScriptDirectory.from_config(alembic_config("postgresql://nobody@127.0.0.1:1/none"))
print(json.dumps({
    "module": ledger.__file__,
    "dirs": [str(path) for path in (DEFAULT_SCHEMA_DIR, MIGRATIONS_DIR, TEMPLATE_DIR, STATIC_DIR)],
    "event_types": sorted(known.name for known in encoded_schemas(EventCodec())),
    "revisions": sorted(revision.revision for revision in script.walk_revisions()),
    "templates": sorted(TEMPLATES.env.list_templates()),
    "css": (STATIC_DIR / "page.css").stat().st_size,
}))
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEDGER_")}
    env["PYTHONPATH"] = str(unpacked)  # ahead of the checkout's editable install in site-packages
    ran = subprocess.run([sys.executable, "-c", probe], cwd=empty, env=env, capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    found = json.loads(ran.stdout.strip().splitlines()[-1])

    assert Path(found["module"]).is_relative_to(unpacked)
    for directory in found["dirs"]:
        assert Path(directory).is_relative_to(unpacked), f"{directory} is not the wheel's"
    from ledger.events import EVENT_TYPES

    assert found["event_types"] == sorted(EVENT_TYPES)
    versions = sorted((ROOT / "projections" / "migrations" / "versions").glob("*.py"))
    assert len(found["revisions"]) == len(versions)
    assert found["templates"] == sorted(path.name for path in (ROOT / "api" / "templates").glob("*.html"))
    assert found["css"] == (ROOT / "api" / "static" / "page.css").stat().st_size


def test_no_shipped_module_finds_files_relative_to_its_own_location() -> None:
    """Data is found through importlib.resources (ledger/package_data.py), never from __file__ upwards."""
    offenders = []
    for path in sorted(_shipped_files()):
        if path.endswith(".py") and re.search(r"Path\(__file__\)", (ROOT / path).read_text(encoding="utf-8")):
            offenders.append(path)
    assert offenders == []
