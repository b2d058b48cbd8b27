# Shared by the launch scripts (sourced, not run): shell quoting and --dry-run.
# shellcheck shell=bash

# The words, each quoted for a POSIX shell where needed (like Python's shlex.quote), in $quoted.
quote() {
  local word out=()
  for word; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
  done
  quoted="${out[*]}"
}

# Runs one command, or with dry_run=1 prints it as one runnable line instead.
run() {
  if ((${dry_run:-0})); then quote "$@"; printf '%s\n' "$quoted"; else "$@"; fi
}
