# genv's shell integration, common to bash and zsh: printed by `genv init -`
# and evaluated in the user's shell. Keep it valid in both shells.
genv() {
  local _genv_command _genv_arg _genv_out _genv_rc _genv_err
  if [ "$#" -eq 0 ]; then
    command genv
    return
  fi
  _genv_command=$1
  shift
  case "$_genv_command" in
  activate | attach | config | deactivate | detach)
    for _genv_arg in "$@"; do
      case "$_genv_arg" in
      --) break ;;
      -h | --help)
        command genv help "$_genv_command"
        return
        ;;
      esac
    done
    _genv_out=$(GENV_SHELL_PID=$$ command genv "sh-$_genv_command" "$@")
    _genv_rc=$?
    if [ -n "$_genv_out" ]; then
      eval "$_genv_out" || {
        _genv_err=$?
        [ "$_genv_rc" -ne 0 ] || _genv_rc=$_genv_err
      }
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

_genv_prompt_set() {
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
  else
    case "${PS1-}" in
    "$_GENV_PS1_PREFIX"*) PS1=$_genv_prefix${PS1#"$_GENV_PS1_PREFIX"} ;;
    *"$_GENV_PS1_PREFIX"*) PS1=${PS1%%"$_GENV_PS1_PREFIX"*}$_genv_prefix${PS1#*"$_GENV_PS1_PREFIX"} ;;
    esac
  fi
  _GENV_PS1_PREFIX=$_genv_prefix
}

_genv_prompt_clear() {
  if [ -n "${_GENV_PS1_SET+x}" ]; then
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
