# Shared by the bin/ scripts: where things are, and the project's Python.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EMOSTREAM_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
JARS="${EMOSTREAM_JARS_DIR:-$ROOT/build/jars}"

die() { echo "error: $*" >&2; exit 1; }

need_venv() {
  [ -x "$PY" ] || die "the Python environment is missing: run bin/setup (or make setup) first"
}

need_kafka_jars() {
  ls "$JARS"/kafka/kafka_*.jar >/dev/null 2>&1 || die "Kafka jars are missing in $JARS/kafka: run bin/setup-jars first"
}

# Default --bootstrap-server to EMOSTREAM_KAFKA_BOOTSTRAP unless the caller gave one.
with_bootstrap() {
  local arg
  for arg in "$@"; do
    case "$arg" in --bootstrap-server|--bootstrap-server=*) return 1 ;; esac
  done
  return 0
}

# True unless one of the options before "--" appears (alone or as --option=value) among the
# arguments after it.
with_option() {
  local options=() arg option
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do options+=("$1"); shift; done
  shift
  for arg in "$@"; do
    for option in "${options[@]}"; do
      case "$arg" in "$option"|"$option"=*) return 1 ;; esac
    done
  done
  return 0
}
