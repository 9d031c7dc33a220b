"""Docker: the engine, images, networks, containers and their readiness. Only this package,
``smtp``, ``dns`` and ``observe`` talk to the outside world."""

import os

# testcontainers reads its settings at import time, and its Ryuk reaper image cannot be pulled
# where there is no registry: we clean up ourselves, by label.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
