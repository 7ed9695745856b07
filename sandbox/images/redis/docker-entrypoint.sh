#!/bin/sh
# Redis entrypoint for the opsbook sandbox, with the interface of the official redis image:
#   `docker run IMAGE`, `docker run IMAGE --requirepass x`, `docker run IMAGE redis-server --appendonly yes`,
#   `docker run IMAGE redis-server /path/redis.conf`, or any other command (redis-cli ...).
# Without a config file, redis-server gets `--bind 0.0.0.0 --protected-mode no --dir /data` first (the official
# image's defaults; Debian's redis-server would otherwise refuse remote clients in protected mode); options given
# later override them. The server runs as user redis; /data is made writable for it.
set -e

# First arg is `-f` or `--some-option`, or a `something.conf`: run redis-server with those arguments.
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

if [ "$1" = redis-server ] || [ "$1" = /usr/bin/redis-server ]; then
	if [ "$(id -u)" = 0 ]; then
		find /data \! -user redis -exec chown redis '{}' +
		exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
	fi
	shift
	case "${1:-}" in
		*.conf|-) set -- redis-server "$@" ;;  # a config file (or stdin) must come first and keeps its own bind
		*) set -- redis-server --bind 0.0.0.0 --protected-mode no --dir /data "$@" ;;
	esac
	# An appropriate umask unless one was set already.
	if [ "$(umask)" = 0022 ]; then umask 0077; fi
fi

exec "$@"
