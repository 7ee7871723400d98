"""Is FiftyOne using the database it is configured to use?

FiftyOne starts one ``mongod`` per database folder (``FIFTYONE_DATABASE_DIR``, else its
config's ``database_dir``), but it silently uses another one in two cases:

- another FiftyOne process (the App, a notebook, a test session) runs its database service:
  ``fiftyone.core.service.MultiClientService.start`` attaches to any running service, matching
  its arguments, not its folder;
- ``FIFTYONE_PRIVATE_DATABASE_PORT`` is in the environment (FiftyOne sets it for the processes
  it starts): FiftyOne connects to that port directly.

Either way, datasets would be read from and written into another folder than the one the user
chose. :func:`check_database` asks the running ``mongod`` for its ``dbPath`` and refuses with
an :class:`~workbench.inputs.InputError` naming both folders and the fix. A user's own MongoDB
(``database_uri``) is not checked: its folder is the server's business. fiftyone is imported
inside the function only: importing this module starts no database.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from workbench.inputs import InputError

PORT_VARIABLE = "FIFTYONE_PRIVATE_DATABASE_PORT"
DIR_VARIABLE = "FIFTYONE_DATABASE_DIR"


@functools.cache
def check_database() -> None:
    """Connect FiftyOne to its database and refuse (InputError) when the running ``mongod``
    keeps its data in another folder than FiftyOne's ``database_dir``. Runs once per process
    (a passed check is cached; a failed one raises again on the next call)."""
    # Read before connecting: FiftyOne sets it itself once it started or attached a service.
    inherited_port = os.environ.get(PORT_VARIABLE)
    import fiftyone as fo
    from fiftyone.core.odm import database

    if fo.config.database_uri is not None:
        return
    client = database.get_db_client()
    if getattr(database, "_db_service", None) is not None:
        inherited_port = None  # FiftyOne found the database through its service, not the port
    parsed = client.admin.command("getCmdLineOpts").get("parsed", {})
    running = parsed.get("storage", {}).get("dbPath")
    if running is None:  # a mongod configured otherwise: nothing to compare
        return
    running_dir = Path(running).expanduser().resolve()
    wanted_dir = Path(fo.config.database_dir).expanduser().resolve()
    if running_dir == wanted_dir:
        return
    wanted = (
        f"{DIR_VARIABLE}={wanted_dir}"
        if DIR_VARIABLE in os.environ
        else f"its configured database_dir {wanted_dir}"
    )
    if inherited_port:
        raise InputError(
            f"FiftyOne would use the database in {running_dir} (the one "
            f"{PORT_VARIABLE}={inherited_port} in the environment connects to), not {wanted}: "
            f"unset {PORT_VARIABLE}, stop the other FiftyOne processes (the App, notebooks) and "
            f"run again, or set {DIR_VARIABLE}={running_dir} to work in that one"
        )
    raise InputError(
        f"FiftyOne would use the database in {running_dir} (another FiftyOne process's running "
        f"database), not {wanted}: stop the other FiftyOne processes (the App, notebooks) and "
        f"run again, or set {DIR_VARIABLE}={running_dir} to work in that one"
    )
