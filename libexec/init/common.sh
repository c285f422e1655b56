# genv's shell integration, common to bash and zsh: printed by `genv init -`
# and evaluated in the user's shell. Keep it valid in both shells.
# @GENV_SH_COMMANDS@ is replaced by `genv init -` with the commands that
# change the shell (one libexec/genv-sh-<command> file each).
genv() {
  local _genv_command _genv_arg _genv_rc _genv_sub _genv_wait='' _genv_int=''
  if [ "$#" -eq 0 ]; then
    command genv
    return
  fi
  _genv_command=$1
  shift
  case "$_genv_command" in
  @GENV_SH_COMMANDS@)
    for _genv_arg in "$@"; do
      case "$_genv_arg" in
      --) break ;;
      -h | --help)
        command genv help "$_genv_command"
        return
        ;;
      --wait | --wait=*) _genv_wait=1 ;;
      esac
    done
    # In a subshell, a pipeline or $(...), a change would reach genv's
    # state but not this shell: the command is told, and refuses anything
    # but printing.
    _genv_sub=
    if _genv_in_subshell; then
      _genv_sub=1
    fi
    # While waiting in line, ^C must stop the waiter (it leaves the line)
    # but not this function: the shell must get what the state says. A trap
    # (reset in the command, unlike an ignored signal) keeps the shell going.
    if [ -n "$_genv_wait" ]; then
      if [ -n "${ZSH_VERSION-}" ]; then
        setopt local_options local_traps
      else
        _genv_int=$(trap -p INT)
      fi
      trap : INT
    fi
    _genv_eval "$_genv_sub" "$_genv_command" "$@"
    _genv_rc=$?
    if [ -n "$_genv_wait" ] && [ -z "${ZSH_VERSION-}" ]; then
      if [ -n "$_genv_int" ]; then
        eval "$_genv_int"
      else
        trap - INT
      fi
    fi
    # (genv sync is what the look after a command runs)
    [ "$_genv_command" = sync ] || _genv_sync_check
    return "$_genv_rc"
    ;;
  *)
    command genv "$_genv_command" "$@"
    _genv_rc=$?
    _genv_sync_check
    return "$_genv_rc"
    ;;
  esac
}

# _genv_eval SUBSHELL COMMAND [ARGS...]: run `genv sh-COMMAND` for this shell
# (SUBSHELL: 1 when run from a subshell) and evaluate the shell code it
# prints; its exit status (or the code's, if only that failed).
_genv_eval() {
  # (Declared, then assigned: under `set -k` an assignment given to local
  # would go to its environment.)
  local _genv_out _genv_rc _genv_err _genv_in _genv_name
  _genv_in=$1
  _genv_name=$2
  shift 2
  _genv_out=$(GENV_SHELL_PID=$$ GENV_SUBSHELL=$_genv_in command genv "sh-$_genv_name" "$@")
  _genv_rc=$?
  if [ -n "$_genv_out" ]; then
    eval "$_genv_out" || {
      _genv_err=$?
      [ "$_genv_rc" -ne 0 ] || _genv_rc=$_genv_err
    }
  fi
  return "$_genv_rc"
}

# After each genv command and before each prompt: bring the terminal in line
# with its environment (genv sync) when something changed, so that it never
# keeps pointing at GPUs it no longer holds: the marker of the environment's
# owner holds another token than at the last sync (its GPUs were released,
# another terminal detached), or the reservation's end is near or past.
# Builtins only (but for root's dd below): no Python runs unless one of these
# is true.
_genv_sync_check() {
  [ -n "${GENV_ENVIRONMENT_ID-}" ] && [ -n "${_GENV_SYNC_FILE-}" ] || return 0
  ! _genv_in_subshell || return 0
  local _genv_mark _genv_now _genv_rest
  _genv_mark=''
  # Only a regular file of this user (or, for root, of anyone): never a
  # link, never a FIFO that would hold the prompt.
  if [ -f "$_GENV_SYNC_FILE" ] && [ ! -L "$_GENV_SYNC_FILE" ]; then
    if [ -O "$_GENV_SYNC_FILE" ]; then
      IFS= read -r _genv_mark <"$_GENV_SYNC_FILE" || _genv_mark=''
    elif [ "${EUID-}" = 0 ]; then
      # Another user's (root in their environment): its owner may swap a
      # FIFO or a huge file in after the tests above, so it is opened
      # without blocking or following a link, and read no further than a
      # token; bash's warning about a NUL in it is not shown.
      {
        _genv_mark=$(command dd if="$_GENV_SYNC_FILE" iflag=nonblock,nofollow bs=64 count=1 status=none \
          2>/dev/null) || _genv_mark=''
      } 2>/dev/null
    fi
  fi
  if [ "$_genv_mark" = "${_GENV_SYNC-}" ]; then
    case ${_GENV_UNTIL-} in
    '' | *[!0-9]*) return 0 ;;
    esac
    [ -r /proc/uptime ] || return 0
    # Seconds since boot (a wall-clock step moves nothing); GENV_TEST_CLOCK
    # shifts it for tests, as it shifts genv's own clock (genv/clock.py).
    IFS=' .' read -r _genv_now _genv_rest </proc/uptime || return 0
    _genv_rest=${GENV_TEST_CLOCK-}
    _genv_rest=${_genv_rest%%:*}
    case ${_genv_rest#-} in
    '' | *[!0-9]*) ;;
    *) _genv_now=$((_genv_now + _genv_rest)) ;;
    esac
    [ "$_genv_now" -ge $((_GENV_UNTIL - 600)) ] || return 0
    [ "$_genv_now" -ge "$_GENV_UNTIL" ] || [ "${_GENV_WARNED-}" != "$_GENV_UNTIL" ] || return 0
  fi
  # (--no-wait: a state lock that another process keeps never holds the prompt)
  _genv_eval '' sync --no-wait
}

_genv_path_add() {
  PATH=$1${PATH:+:$PATH}
}

_genv_path_remove() {
  local _genv_p=":${PATH-}:"
  case "$_genv_p" in
  *":$1:"*) ;;
  *) return 0 ;;
  esac
  _genv_p=${_genv_p%%":$1:"*}:${_genv_p#*":$1:"}
  _genv_p=${_genv_p#:}
  PATH=${_genv_p%:}
}

# The prompt shows (genv) or (genv:NAME). PS1 holds either a reference to
# _GENV_PROMPT_NAME (when the shell expands the prompt: bash's promptvars,
# zsh's PROMPT_SUBST) or the name as plain text (when it does not); the
# shell-specific _genv_prompt_prefix picks which. A hook that runs before
# each prompt picks again, so switching the option later never turns the
# name into code.

# _genv_prompt_set [NAME]: show the prefix (and NAME) in the prompt.
_genv_prompt_set() {
  if [ "$#" -gt 0 ]; then
    _GENV_PROMPT_NAME=$1
  else
    unset _GENV_PROMPT_NAME
  fi
  local _genv_prefix
  _genv_prompt_prefix
  if [ -z "${_GENV_PS1_SET+x}" ]; then
    if [ -n "${PS1+x}" ]; then
      _GENV_PS1_SET=1
      _GENV_PS1_OLD=$PS1
    else
      _GENV_PS1_SET=0
      _GENV_PS1_OLD=
    fi
    PS1=$_genv_prefix$_GENV_PS1_OLD
    _genv_prompt_hook_add
  else
    case "${PS1-}" in
    "$_GENV_PS1_PREFIX"*) PS1=$_genv_prefix${PS1#"$_GENV_PS1_PREFIX"} ;;
    *"$_GENV_PS1_PREFIX"*) PS1=${PS1%%"$_GENV_PS1_PREFIX"*}$_genv_prefix${PS1#*"$_GENV_PS1_PREFIX"} ;;
    esac
  fi
  _GENV_PS1_PREFIX=$_genv_prefix
}

# _genv_prompt_name [NAME]: a new name, if the prompt shows genv's prefix.
_genv_prompt_name() {
  if [ -n "${_GENV_PS1_SET+x}" ]; then
    _genv_prompt_set "$@"
  fi
}

# Before each prompt: bring the terminal in line with its environment (see
# _genv_sync_check); if the prompt option changed, rebuild the prefix. The
# exit status of the last command is kept for what runs after this hook.
_genv_prompt_refresh() {
  set -- "$?"
  local _genv_status _genv_prefix
  _genv_status=$1
  _genv_sync_check
  if [ -n "${_GENV_PS1_SET+x}" ]; then
    _genv_prompt_prefix
    if [ "$_genv_prefix" != "${_GENV_PS1_PREFIX-}" ]; then
      if [ -n "${_GENV_PROMPT_NAME+x}" ]; then
        _genv_prompt_set "$_GENV_PROMPT_NAME"
      else
        _genv_prompt_set
      fi
    fi
  fi
  return "$_genv_status"
}

_genv_prompt_clear() {
  if [ -n "${_GENV_PS1_SET+x}" ]; then
    _genv_prompt_hook_remove
    if [ "${PS1-}" = "$_GENV_PS1_PREFIX$_GENV_PS1_OLD" ]; then
      if [ "$_GENV_PS1_SET" = 1 ]; then
        PS1=$_GENV_PS1_OLD
      else
        unset PS1
      fi
    else
      case "${PS1-}" in
      *"$_GENV_PS1_PREFIX"*) PS1=${PS1%%"$_GENV_PS1_PREFIX"*}${PS1#*"$_GENV_PS1_PREFIX"} ;;
      esac
    fi
  fi
  unset _GENV_PS1_SET _GENV_PS1_OLD _GENV_PS1_PREFIX _GENV_PROMPT_NAME
}
