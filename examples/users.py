"""Who the examples sign in besides the configured user (``agenttask_user_id`` or
``agenttask_identifier`` in pytest.ini; the emulator's seeded user when unset).

A module rather than a fixture because marker arguments are fixed at import time.
"""

from __future__ import annotations

import os

__all__ = ["SECOND_USER", "SECOND_USER_ENV"]

#: Against Clerk, set this variable to the email address of a second user of your
#: development instance; without it, the tests that sign in a second user are skipped.
SECOND_USER_ENV = "EXAMPLES_SECOND_USER"

#: The second user's identifier. The emulator creates this user for the run.
SECOND_USER = os.environ.get(SECOND_USER_ENV) or "bob@example.com"
