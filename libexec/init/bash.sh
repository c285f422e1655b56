# genv's shell integration, bash only (printed after common.sh).
# Sets the caller's _genv_prefix. The name is referenced, not pasted, so the
# prompt never runs it as code.
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
