#!/bin/sh
# The stand-in redis image's entrypoint (tests/engine.sh), the official image's contract: options or a .conf
# file as the first argument mean redis-server; started as root, it drops to the redis user.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
if [ "$1" = redis-server ]; then
  umask 0077
fi
exec "$@"
