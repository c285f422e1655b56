"""genv's core: the operations every front end shares.

The shell function (through the ``sh-*`` commands), ``genv run``, the SDK and
its Jupyter kernels, and the remote and Slurm front ends all call these
modules; none of them copies their logic, and none of these modules imports
a command (``genv.commands``) or prints: messages go through
``genv.report``, failures are ``GenvError``.

- ``context``: who is calling (user, shell, environment).
- ``session``: the frame of a command that reads or changes state: the GPU
  facts before the lock, the lock, dead terminals dropped, the attach.
- ``waitline``: the line of requests waiting for GPUs.
- ``waitname``: a waiter's name in the kernel (``genv-waiting``) while it
  waits, apart from the line so that a command that never waits imports
  nothing of it.
- ``activation``: the activation plan (variables to set, unset or restore,
  PATH and prompt changes) and its one non-shell renderer, ``apply``.
- ``operations``: create or join an environment, attach (waiting in line),
  detach, configure, leave, deactivate; each returns a plan.
- ``supervise``: start a user's command and wait for it, passing signals on
  exactly once (``genv run``, ``genv lock``).
- ``turns``: the per-GPU locks of ``genv lock`` and ``genv.sdk.lock()``.
- ``listings``: the listings (``envs``, ``devices``, ``ps``, ``status``):
  each one's session and documents, which the commands render and the SDK
  returns.

Importing this package imports nothing else: each command imports only the
modules it needs.
"""
