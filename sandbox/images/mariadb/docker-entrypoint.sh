#!/bin/bash
# MariaDB entrypoint for the opsbook sandbox, with the environment interface of the official mariadb image:
#   MARIADB_ROOT_PASSWORD | MYSQL_ROOT_PASSWORD          (or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD / MARIADB_RANDOM_ROOT_PASSWORD)
#   MARIADB_ROOT_HOST     | MYSQL_ROOT_HOST              (default %)
#   MARIADB_DATABASE      | MYSQL_DATABASE
#   MARIADB_USER          | MYSQL_USER,  MARIADB_PASSWORD | MYSQL_PASSWORD
#   every *_PASSWORD also as *_PASSWORD_FILE; initdb scripts in /docker-entrypoint-initdb.d (*.sh, *.sql, *.sql.gz)
# The datadir (/var/lib/mysql) is initialised on first start only; the server then runs as mysql, on 0.0.0.0:3306.
set -eo pipefail
shopt -s nullglob

log() { printf '%s [Entrypoint]: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S+00:00')" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# file_env VAR [DEFAULT]: VAR from VAR, VAR_FILE, or the MYSQL_* alias of a MARIADB_* name.
file_env() {
	local var="$1" alias="${1/MARIADB_/MYSQL_}"
	local fvar="${var}_FILE" falias="${alias}_FILE" val="${2:-}"
	if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then
		die "both $var and $fvar are set (but are exclusive)"
	fi
	if [ -n "${!var:-}" ]; then
		val="${!var}"
	elif [ -n "${!fvar:-}" ]; then
		val="$(< "${!fvar}")"
	elif [ "$alias" != "$var" ] && [ -n "${!alias:-}" ]; then
		val="${!alias}"
	elif [ "$alias" != "$var" ] && [ -n "${!falias:-}" ]; then
		val="$(< "${!falias}")"
	fi
	export "$var"="$val"
	unset "$fvar"
}

# A string literal for SQL: backslashes and single quotes escaped.
sql_string() { local s="${1//\\/\\\\}"; s="${s//\'/\\\'}"; printf "'%s'" "$s"; }
sql_ident() { printf '`%s`' "${1//\`/\`\`}"; }

# First arg is `-f` or `--some-option`: run the server with those options.
if [ "${1#-}" != "$1" ]; then
	set -- mariadbd "$@"
fi

is_server() { case "$1" in mariadbd|mysqld|/usr/sbin/mariadbd|/usr/sbin/mysqld) return 0 ;; esac; return 1; }

if ! is_server "$1"; then
	exec "$@"
fi

# Do not let options such as --help or --verbose initialise anything.
for arg; do
	case "$arg" in
		-'?'|--help|--print-defaults|-V|--version) exec "$@" ;;
	esac
done

DATADIR="$("$1" "${@:2}" --verbose --help 2>/dev/null | awk '$1 == "datadir" { print $2; exit }')"
DATADIR="${DATADIR:-/var/lib/mysql}"
DATADIR="${DATADIR%/}"
SOCKET=/run/mysqld/mysqld.sock

if [ "$(id -u)" = 0 ]; then
	mkdir -p "$DATADIR" /run/mysqld
	# Only what is not already owned by mysql (a large datadir is not walked twice).
	find "$DATADIR" /run/mysqld \! -user mysql -exec chown mysql:mysql '{}' +
	exec setpriv --reuid=mysql --regid=mysql --init-groups "$BASH_SOURCE" "$@"
fi

if [ ! -d "$DATADIR/mysql" ]; then
	file_env MARIADB_ROOT_PASSWORD
	file_env MARIADB_ROOT_HOST '%'
	file_env MARIADB_DATABASE
	file_env MARIADB_USER
	file_env MARIADB_PASSWORD
	file_env MARIADB_ALLOW_EMPTY_ROOT_PASSWORD
	file_env MARIADB_RANDOM_ROOT_PASSWORD
	: "${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:=${MYSQL_ALLOW_EMPTY_PASSWORD:-}}"
	: "${MARIADB_RANDOM_ROOT_PASSWORD:=${MYSQL_RANDOM_ROOT_PASSWORD:-}}"

	if [ -z "$MARIADB_ROOT_PASSWORD" ] && [ -z "$MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" ] \
			&& [ -z "$MARIADB_RANDOM_ROOT_PASSWORD" ]; then
		cat >&2 <<-'EOM'
			error: the database is uninitialized and no root password is given.
			       Set MARIADB_ROOT_PASSWORD (or MYSQL_ROOT_PASSWORD, or *_FILE), or explicitly
			       MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1 or MARIADB_RANDOM_ROOT_PASSWORD=1.
			       Nothing was written to the data directory.
		EOM
		exit 1
	fi
	if [ -n "$MARIADB_USER" ] && [ -z "$MARIADB_PASSWORD" ]; then
		die "MARIADB_USER (MYSQL_USER) is set but MARIADB_PASSWORD (MYSQL_PASSWORD) is empty"
	fi
	if [ "$MARIADB_USER" = root ]; then
		die "MARIADB_USER=root: root is created from MARIADB_ROOT_PASSWORD; pick another user name"
	fi
	if [ -n "$MARIADB_RANDOM_ROOT_PASSWORD" ] && [ -z "$MARIADB_ROOT_PASSWORD" ]; then
		MARIADB_ROOT_PASSWORD="$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24)"
		log "GENERATED ROOT PASSWORD: $MARIADB_ROOT_PASSWORD"
	fi

	log "initialising database files in $DATADIR"
	mariadb-install-db --datadir="$DATADIR" --rpm --auth-root-authentication-method=normal --skip-test-db \
		--cross-bootstrap --skip-name-resolve --default-time-zone=SYSTEM --skip-log-bin \
		--loose-innodb_buffer_pool_load_at_startup=0 --loose-innodb_buffer_pool_dump_at_shutdown=0 > /dev/null

	log "starting a temporary server (no networking)"
	"$@" --skip-networking --default-time-zone=SYSTEM --socket="$SOCKET" --wsrep_on=OFF --skip-log-bin \
		--expire-logs-days=0 --loose-innodb_buffer_pool_load_at_startup=0 --skip-slave-start &
	TEMP_PID=$!
	for _ in $(seq 1 300); do
		if mariadb --protocol=socket --socket="$SOCKET" -uroot --database=mysql -e 'SELECT 1' >/dev/null 2>&1; then
			break
		fi
		kill -0 "$TEMP_PID" 2>/dev/null || die "the temporary server exited during initialisation"
		sleep 0.1
	done

	ROOT_CNF="$(mktemp /run/mysqld/.root-XXXXXX.cnf)"
	trap 'rm -f "$ROOT_CNF"' EXIT
	printf '[client]\nprotocol=socket\nsocket=%s\nuser=root\npassword="%s"\n' "$SOCKET" \
		"$(printf '%s' "$MARIADB_ROOT_PASSWORD" | sed 's/\\/\\\\/g; s/"/\\"/g')" > "$ROOT_CNF"

	{
		echo "SET @@SESSION.SQL_LOG_BIN=0;"
		echo "SET @@SESSION.SQL_MODE=REPLACE(@@SESSION.SQL_MODE, 'NO_BACKSLASH_ESCAPES', '');"
		echo "DROP USER IF EXISTS root@'127.0.0.1', root@'::1';"
		echo "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\\'', @@hostname, '\\'');"
		echo "SET PASSWORD FOR 'root'@'localhost' = PASSWORD($(sql_string "$MARIADB_ROOT_PASSWORD"));"
		if [ -n "$MARIADB_ROOT_HOST" ] && [ "$MARIADB_ROOT_HOST" != localhost ]; then
			echo "CREATE USER 'root'@$(sql_string "$MARIADB_ROOT_HOST") IDENTIFIED BY $(sql_string "$MARIADB_ROOT_PASSWORD");"
			echo "GRANT ALL ON *.* TO 'root'@$(sql_string "$MARIADB_ROOT_HOST") WITH GRANT OPTION;"
			echo "GRANT PROXY ON ''@'%' TO 'root'@$(sql_string "$MARIADB_ROOT_HOST") WITH GRANT OPTION;"
		fi
		if [ -n "$MARIADB_DATABASE" ]; then
			echo "CREATE DATABASE IF NOT EXISTS $(sql_ident "$MARIADB_DATABASE");"
		fi
		if [ -n "$MARIADB_USER" ]; then
			echo "CREATE USER $(sql_string "$MARIADB_USER")@'%' IDENTIFIED BY $(sql_string "$MARIADB_PASSWORD");"
			if [ -n "$MARIADB_DATABASE" ]; then
				echo "GRANT ALL ON $(sql_ident "$MARIADB_DATABASE").* TO $(sql_string "$MARIADB_USER")@'%';"
			fi
		fi
		echo "FLUSH PRIVILEGES;"
	} | mariadb --protocol=socket --socket="$SOCKET" -uroot --database=mysql --binary-mode \
		|| die "setting up root, database and user failed"

	client=(mariadb --defaults-extra-file="$ROOT_CNF" --binary-mode)
	[ -n "$MARIADB_DATABASE" ] && client+=(--database="$MARIADB_DATABASE")
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then log "running $f"; "$f"
				else log "sourcing $f"; . "$f"; fi ;;
			*.sql)    log "running $f"; "${client[@]}" < "$f" ;;
			*.sql.gz) log "running $f"; gunzip -c "$f" | "${client[@]}" ;;
			*)        log "ignoring $f" ;;
		esac
	done

	log "stopping the temporary server"
	mariadb-admin --defaults-extra-file="$ROOT_CNF" shutdown
	wait "$TEMP_PID" || true
	rm -f "$ROOT_CNF"
	trap - EXIT
	log "MariaDB init process done; ready for start up"
fi

exec "$@"
