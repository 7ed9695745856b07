#!/bin/bash
# PostgreSQL entrypoint for the opsbook sandbox, with the environment interface of the official postgres image:
#   POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_USER (default postgres),
#   POSTGRES_DB (default $POSTGRES_USER), POSTGRES_INITDB_ARGS, POSTGRES_INITDB_WALDIR,
#   POSTGRES_HOST_AUTH_METHOD (default scram-sha-256), PGDATA (default /var/lib/postgresql/data),
#   *_FILE variants of POSTGRES_PASSWORD/USER/DB/INITDB_ARGS; /docker-entrypoint-initdb.d (*.sh, *.sql, *.sql.gz).
# Initialises $PGDATA on first start only, then execs postgres as user postgres (listen_addresses '*').
set -Eeo pipefail
shopt -s nullglob

log() { printf '%s [entrypoint]: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*"; }

file_env() {
	local var="$1" fvar="${1}_FILE" val="${2:-}"
	if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then
		log "error: both $var and $fvar are set (but are exclusive)" >&2
		exit 1
	fi
	if [ -n "${!var:-}" ]; then
		val="${!var}"
	elif [ -n "${!fvar:-}" ]; then
		val="$(< "${!fvar}")"
	fi
	export "$var"="$val"
	unset "$fvar"
}

# First arg is `-f` or `--some-option`: run postgres with those options.
if [ "${1#-}" != "$1" ]; then
	set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
	exec "$@"
fi
for arg; do
	case "$arg" in -'?'|--help|--describe-config|-V|--version) exec "$@" ;; esac
done

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chmod 00700 "$PGDATA" || :
	find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
	chown postgres:postgres /var/run/postgresql
	chmod 3777 /var/run/postgresql
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		mkdir -p "$POSTGRES_INITDB_WALDIR"
		find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres:postgres '{}' +
		chmod 700 "$POSTGRES_INITDB_WALDIR"
	fi
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=}"

	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		cat >&2 <<-'EOM'
			Error: Database is uninitialized and superuser password is not specified.
			       Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value for the superuser,
			       or POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password
			       (not recommended). Nothing was written to PGDATA.
		EOM
		exit 1
	fi
	if [ "${#POSTGRES_PASSWORD}" -gt 100 ]; then
		log "warning: POSTGRES_PASSWORD is longer than 100 characters; md5 clients may truncate it" >&2
	fi

	log "initialising $PGDATA"
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		POSTGRES_INITDB_ARGS="$POSTGRES_INITDB_ARGS --waldir $POSTGRES_INITDB_WALDIR"
	fi
	# shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list by design (as in the official image)
	initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
		--auth-local=trust --auth-host=trust $POSTGRES_INITDB_ARGS > /dev/null

	# Local socket and loopback trust (pg_isready, psql in the container); everything else needs a password.
	auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	if [ "$auth" = md5 ]; then
		echo "password_encryption = md5" >> "$PGDATA/postgresql.auto.conf"
	fi
	printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"

	log "starting a temporary server (unix socket only)"
	PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w -t 60 start > /dev/null

	psql_base=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc -h /var/run/postgresql)
	if [ "$POSTGRES_DB" != postgres ]; then
		exists="$("${psql_base[@]}" --dbname postgres -tA --set db="$POSTGRES_DB" \
			<<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
		if [ -z "$exists" ]; then
			"${psql_base[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";' > /dev/null
		fi
	fi

	export PGPASSWORD="$POSTGRES_PASSWORD"
	psql_run=("${psql_base[@]}" --dbname "$POSTGRES_DB")
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then log "running $f"; "$f"
				else log "sourcing $f"; . "$f"; fi ;;
			*.sql)    log "running $f"; "${psql_run[@]}" -f "$f" > /dev/null ;;
			*.sql.gz) log "running $f"; gunzip -c "$f" | "${psql_run[@]}" > /dev/null ;;
			*)        log "ignoring $f" ;;
		esac
	done
	unset PGPASSWORD

	log "stopping the temporary server"
	pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
	log "PostgreSQL init process complete; ready for start up"
fi

exec "$@"
