"""The run's own TLS lab: a CA per run, certificates for the roles that ask, broken ones on purpose."""
