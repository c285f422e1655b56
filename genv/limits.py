"""Bounds on every value genv accepts or reads back (one place for each)."""

MAX_GPUS = 1024
"""GPUs per machine, and the largest GPU count an environment may ask for."""

MAX_TEXT = 256
"""Characters in a name or an environment id."""

MAX_PID = (1 << 31) - 1

MAX_TIME = 1e11
"""Seconds since 1970 (the year 5138): a larger time in a file is damage."""
