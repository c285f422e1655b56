# genv's shell integration, common to bash and zsh: printed by `genv init -`
# and evaluated in the user's shell. Keep it valid in both shells.
# @GENV_SH_COMMANDS@ is replaced by `genv init -` with the commands that
# change the shell (one libexec/genv-sh-<command> file each).
genv() {
  local _genv_command _genv_arg _genv_out _genv_rc _genv_err _genv_sub _genv_wait='' _genv_int=''
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
    _genv_out=$(GENV_SHELL_PID=$$ GENV_SUBSHELL=$_genv_sub command genv "sh-$_genv_command" "$@")
    _genv_rc=$?
    if [ -n "$_genv_out" ]; then
      eval "$_genv_out" || {
        _genv_err=$?
        [ "$_genv_rc" -ne 0 ] || _genv_rc=$_genv_err
      }
    fi
    if [ -n "$_genv_wait" ] && [ -z "${ZSH_VERSION-}" ]; then
      if [ -n "$_genv_int" ]; then
        eval "$_genv_int"
      else
        trap - INT
      fi
    fi
    return "$_genv_rc"
    ;;
  *)
    command genv "$_genv_command" "$@"
    ;;
  esac
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

# Before each prompt: if the prompt option changed, rebuild the prefix.
_genv_prompt_refresh() {
  [ -n "${_GENV_PS1_SET+x}" ] || return 0
  local _genv_prefix
  _genv_prompt_prefix
  if [ "$_genv_prefix" != "${_GENV_PS1_PREFIX-}" ]; then
    if [ -n "${_GENV_PROMPT_NAME+x}" ]; then
      _genv_prompt_set "$_GENV_PROMPT_NAME"
    else
      _genv_prompt_set
    fi
  fi
  return 0
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
