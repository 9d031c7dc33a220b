"""Observations from inside the containers: mailboxes (and later captures and logs)."""
