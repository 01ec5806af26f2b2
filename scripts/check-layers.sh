#!/usr/bin/env bash
# Fails when an import crosses the layers the wrong way (docs/architecture.md):
# core/ imports neither host nor agent; host/ never imports agent/ (steps are
# under agent/); agent/ never imports host/.
set -euo pipefail
cd "$(dirname "$0")/../runner/src"

status=0
# forbid DIR PATTERN WHY: no file under DIR may mention PATTERN.
forbid() {
  local hits
  hits=$(grep -rnE "$2" "$1" --include='*.rs' || true)
  if [ -n "$hits" ]; then
    echo "check-layers: $3:" >&2
    echo "$hits" >&2
    status=1
  fi
}
forbid core 'crate::(host|agent)\b|super::super::(host|agent)\b' "core imports host or agent"
forbid host 'crate::agent\b' "host imports agent"
forbid agent 'crate::host\b' "agent imports host"
[ "$status" -eq 0 ] && echo "check-layers: core <- host, core <- agent; no import crosses"
exit "$status"
