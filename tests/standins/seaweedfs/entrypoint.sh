#!/bin/sh
# The stand-in seaweedfs image's entrypoint (tests/engine.sh): the official image's docker/entrypoint.sh for
# `server` and `mini` (the defaults it adds), any other first argument passed to weed. Started as root, it
# hands /data to the seaweed user and drops to it.
export GODEBUG="${GODEBUG:+$GODEBUG,}fips140=on"

if [ "$(id -u)" = 0 ]; then
  if [ "$(stat -c '%u:%g' /data)" != "$(id -u seaweed):$(id -g seaweed)" ]; then
    chown -R seaweed:seaweed /data
  fi
  exec setpriv --reuid=seaweed --regid=seaweed --init-groups "$0" "$@"
fi

passed() { # passed FLAG ARGS...: whether -FLAG or --FLAG (with or without =value) is among ARGS
  flag="$1"
  shift
  for arg in "$@"; do
    case "$arg" in "-$flag" | "--$flag" | "-$flag="* | "--$flag="*) return 0 ;; esac
  done
  return 1
}

case "${1:-}" in
  server)
    shift
    if passed volume.max "$@"; then set -- -dir=/data -master.volumeSizeLimitMB=1024 "$@"
    else set -- -dir=/data -volume.max=0 -master.volumeSizeLimitMB=1024 "$@"; fi
    exec /usr/bin/weed -logtostderr=true server "$@" ;;
  mini)
    shift
    if ! passed dir "$@"; then set -- -dir=/data "$@"; fi
    exec /usr/bin/weed -logtostderr=true mini "$@" ;;
  master | volume | filer | s3)
    sub="$1"
    shift
    exec /usr/bin/weed -logtostderr=true "$sub" "$@" ;;
  *) exec /usr/bin/weed "$@" ;;
esac
