#!/bin/sh
# The stand-in's entry point: /bin/prometheus with the official image's arguments, except one Debian's build
# does not know. Debian removed the OTLP receiver, so `--web.enable-otlp-receiver` would stop it with "unknown
# long flag": the flag is dropped with a line saying so (OTLP pushes then get a 404; docs/monitoring.md).
set -eu
for arg in "$@"; do
  shift
  if [ "$arg" = "--web.enable-otlp-receiver" ]; then
    echo "prometheus stand-in: Debian's build has no OTLP receiver; ignoring $arg" >&2
    continue
  fi
  set -- "$@" "$arg"
done
exec /bin/prometheus "$@"
