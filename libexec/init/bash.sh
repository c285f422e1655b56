# genv's shell integration, bash only (printed after common.sh).

_genv_in_subshell() {
  [ "$BASHPID" != "$$" ]
}

# Sets the caller's _genv_prefix. With promptvars the name is referenced,
# not pasted, so the prompt never runs it as code; without it, bash shows
# the text as it is (but for its backslash escapes).
_genv_prompt_prefix() {
  if shopt -q promptvars; then
    # shellcheck disable=SC2016  # the reference is expanded at each prompt
    _genv_prefix='(genv${_GENV_PROMPT_NAME:+:$_GENV_PROMPT_NAME}) '
  elif [ -n "${_GENV_PROMPT_NAME-}" ]; then
    _genv_prefix="(genv:${_GENV_PROMPT_NAME//\\/\\\\}) "
  else
    _genv_prefix='(genv) '
  fi
}

# The refresh runs first in PROMPT_COMMAND (its first element, when it is
# an array), before anything the user or a framework put there.
_genv_prompt_hook_add() {
  case "${PROMPT_COMMAND-}" in
  _genv_prompt_refresh | "_genv_prompt_refresh;"*) return 0 ;;
  esac
  [ -n "${PROMPT_COMMAND+x}" ] || _GENV_PC_UNSET=1
  PROMPT_COMMAND="_genv_prompt_refresh${PROMPT_COMMAND:+;$PROMPT_COMMAND}"
}

_genv_prompt_hook_remove() {
  case "${PROMPT_COMMAND-}" in
  _genv_prompt_refresh)
    if [ -n "${_GENV_PC_UNSET-}" ]; then
      unset PROMPT_COMMAND
    else
      PROMPT_COMMAND=
    fi
    ;;
  "_genv_prompt_refresh;"*) PROMPT_COMMAND=${PROMPT_COMMAND#_genv_prompt_refresh;} ;;
  esac
  unset _GENV_PC_UNSET
}

_genv_complete() {
  local _genv_cur=${COMP_WORDS[COMP_CWORD]} _genv_line _genv_q
  local -a _genv_words=("${COMP_WORDS[@]:1:COMP_CWORD-1}")
  COMPREPLY=()
  while IFS= read -r _genv_line; do
    if [[ $_genv_line == "$_genv_cur"* ]]; then
      if [[ $_genv_line == *[![:alnum:]_.,:/=+@-]* ]]; then
        printf -v _genv_q '%q' "$_genv_line"
      else
        _genv_q=$_genv_line
      fi
      COMPREPLY+=("$_genv_q")
    fi
  done < <(command genv completions "${_genv_words[@]}" 2>/dev/null)
}
complete -F _genv_complete genv
