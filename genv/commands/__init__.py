"""One module per genv command; ``libexec/genv-<command>`` runs its ``main``."""
