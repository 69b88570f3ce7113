"""`deploy matrix`: one model in every format this machine can run, each held to its training form."""
