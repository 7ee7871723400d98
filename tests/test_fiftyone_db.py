"""FiftyOne's database location check (``workbench.integrations.fiftyone_db``), against the
session's real private database (see tests/test_fiftyone.py) and real subprocesses.

A process whose FIFTYONE_DATABASE_DIR names another folder, and which has no
FIFTYONE_PRIVATE_DATABASE_PORT, attaches to the session's running database service all the
same (FiftyOne matches the service's arguments, not its folder): the probe below shows it, and
the CLI refuses to go on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.integrations.fiftyone_db import check_database

pytestmark = pytest.mark.fiftyone

# What FiftyOne does without the check: the folder it is told, the folder its mongod uses.
PROBE = """
import json
import fiftyone as fo
from fiftyone.core.odm import database
opts = database.get_db_client().admin.command("getCmdLineOpts")
print(json.dumps([fo.config.database_dir, opts["parsed"]["storage"]["dbPath"]]))
"""


@pytest.fixture(scope="module")
def fo():
    """fiftyone on the session's private database, running (its mongod started by this query)."""
    import fiftyone

    if fiftyone.config.database_dir != os.environ["FIFTYONE_DATABASE_DIR"]:
        pytest.fail(f"fiftyone uses {fiftyone.config.database_dir}, not the test database")
    fiftyone.list_datasets()
    return fiftyone


def running_dbpath(fo) -> Path:
    from fiftyone.core.odm import database

    opts = database.get_db_client().admin.command("getCmdLineOpts")
    return Path(opts["parsed"]["storage"]["dbPath"]).resolve()


def elsewhere(folder: Path, **extra: str) -> dict[str, str]:
    """This environment with FiftyOne's database folder moved to ``folder`` and without the
    running database's port."""
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_PRIVATE_DATABASE_PORT"}
    return env | {"FIFTYONE_DATABASE_DIR": str(folder)} | extra


def error_line(command: str, name: str, env: dict) -> str:
    """The one ``error: ...`` line of ``python -m workbench fiftyone COMMAND NAME`` in ``env``,
    which must exit with status 2 (a user error, no traceback)."""
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "fiftyone", command, name],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    return line


def test_the_sessions_own_database_passes(fo):
    session_dir = Path(os.environ["FIFTYONE_DATABASE_DIR"]).resolve()
    assert running_dbpath(fo) == session_dir  # the mongod really keeps its data there
    check_database()
    check_database()  # cached: once per process


def test_another_folder_with_a_database_running_is_refused_naming_both(fo, tmp_path):
    session_dir = running_dbpath(fo)
    fresh = (tmp_path / "fresh_db").resolve()
    env = elsewhere(fresh)

    # Without the check, FiftyOne silently uses the session's database, not the fresh folder.
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    configured, used = json.loads(probe.stdout.splitlines()[-1])
    assert Path(configured) == fresh
    assert Path(used).resolve() == session_dir
    assert not (fresh / "mongod.lock").exists()  # no mongod was ever started for it

    line = error_line("evaluate", "some-name", env)
    assert re.search(rf"database in {re.escape(str(session_dir))} \(another FiftyOne", line), line
    assert f"not FIFTYONE_DATABASE_DIR={fresh}:" in line
    assert f"set FIFTYONE_DATABASE_DIR={session_dir} to work in that one" in line
    assert "FIFTYONE_PRIVATE_DATABASE_PORT" not in line  # not in its environment


def test_an_inherited_database_port_is_named_in_the_refusal(fo, tmp_path):
    fresh = (tmp_path / "fresh_db").resolve()
    port = os.environ["FIFTYONE_PRIVATE_DATABASE_PORT"]  # set by fo's first query
    line = error_line("launch", "some-name", elsewhere(fresh, FIFTYONE_PRIVATE_DATABASE_PORT=port))
    assert (
        f"database in {running_dbpath(fo)} (the one FIFTYONE_PRIVATE_DATABASE_PORT={port}" in line
    )
    assert (
        f"not FIFTYONE_DATABASE_DIR={fresh}:" in line
        and "unset FIFTYONE_PRIVATE_DATABASE_PORT" in line
    )


def test_a_users_own_mongodb_is_not_checked(fo, tmp_path):
    """With database_uri, the folder is the server's business: the command goes on (and finds
    no such dataset in it)."""
    port = os.environ["FIFTYONE_PRIVATE_DATABASE_PORT"]
    env = elsewhere(tmp_path / "unused", FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{port}")
    line = error_line("evaluate", "no-such-dataset", env)
    assert "no FiftyOne dataset 'no-such-dataset'" in line, line
