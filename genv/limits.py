"""Bounds on every value genv accepts or reads back (one place for each)."""

MAX_GPUS = 1024
"""GPUs per machine, and the largest GPU count an environment may ask for."""

MAX_TEXT = 256
"""Characters in a name or an environment id."""

MAX_TOKEN = 128
"""Characters in a process identity token (``linux:<boot>:<ticks>``)."""

MAX_PID = (1 << 31) - 1

MAX_TIME = 1e11
"""Seconds since 1970 (the year 5138): a larger time in a file is damage."""

MAX_SIZE = 1 << 50
"""Bytes of GPU memory (1 PiB): the largest size accepted, and read back."""

MIN_SIZE = 1 << 20
"""The smallest share of GPU memory (1 MiB, nvidia-smi's unit)."""

MAX_SECONDS = 1e9
"""A duration in seconds (31 years): ``--wait``, time-outs, intervals."""

MAX_NOTE = 1 << 62
"""Note numbers stay below this (``environments.add_note``)."""

MAX_FILE = 64 << 20
"""Bytes of a state file genv reads back: a larger one is damage."""

MAX_RECORD = 512 << 10
"""Bytes of root's record (``genv.sightings``) one user's environments may
take. Users write their own files freely (up to ``MAX_FILE``, 64 MiB), and
root records every environment holding GPUs: unbounded, a few users' forged
files made root's own file too large to read back. Counted in bytes, not
claims: an environment id or a GPU name a user wrote takes up to 12 bytes a
character in the file (``\\ud83d\\ude00``). A user holding every GPU of the
largest machine (``MAX_GPUS``), each in an environment of its own with a
long id, takes about 300 KiB; so 512 KiB binds no real user, and it takes
128 users' files, all at their limit, to fill ``MAX_FILE``."""
