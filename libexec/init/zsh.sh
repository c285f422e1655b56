# genv's shell integration, zsh only (printed after common.sh).

if zmodload -F zsh/system p:sysparams 2>/dev/null; then
  _genv_in_subshell() {
    [[ ${sysparams[pid]} != "$$" ]]
  }
else
  _genv_in_subshell() {
    (( ZSH_SUBSHELL ))
  }
fi

# Sets the caller's _genv_prefix. Without PROMPT_SUBST only % is special;
# with it, the name is referenced, not pasted, and its % signs are doubled
# at display time.
_genv_prompt_prefix() {
  if [[ -o promptsubst ]]; then
    _genv_prefix='(genv${_GENV_PROMPT_NAME:+:${_GENV_PROMPT_NAME//\%/%%}}) '
  elif [ -n "${_GENV_PROMPT_NAME-}" ]; then
    _genv_prefix="(genv:${_GENV_PROMPT_NAME//\%/%%}) "
  else
    _genv_prefix='(genv) '
  fi
}

_genv_prompt_hook_add() {
  typeset -ga precmd_functions
  precmd_functions=(_genv_prompt_refresh ${precmd_functions:#_genv_prompt_refresh})
}

_genv_prompt_hook_remove() {
  if (( ${+precmd_functions} )); then
    precmd_functions=(${precmd_functions:#_genv_prompt_refresh})
  fi
}

_genv_complete() {
  local -a _genv_candidates
  _genv_candidates=("${(@f)$(command genv completions "${(@)words[2,CURRENT-1]}" 2>/dev/null)}")
  _genv_candidates=("${(@)_genv_candidates:#}")
  compadd -a _genv_candidates
}
if (( ${+functions[compdef]} )); then
  compdef _genv_complete genv
fi
