"""Claims: the papers' claims as a matrix of checks, the run that measures them, the zoo's counts,
and the report writers."""
