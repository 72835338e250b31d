<?php
// Database connections for the sample app; credentials live outside the release, in one file
// written by the lab's set-up: MariaDB (host, user, password, name) and, where the deployment has
// PostgreSQL, pgbouncer in front of it (pg_host, pg_port, pg_user, pg_password, pg_name).
const APP_DB_TIMEOUT = 2;  // seconds: a database that does not answer makes the app unhealthy, not hang

function app_config(): array
{
    static $cfg = null;
    if ($cfg === null) {
        $cfg = parse_ini_file('/etc/mayday-app/db.ini');
        if ($cfg === false) {
            throw new RuntimeException('database config unreadable');
        }
    }
    return $cfg;
}

function app_db(): mysqli
{
    $cfg = app_config();
    mysqli_report(MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT);
    $db = mysqli_init();
    $db->options(MYSQLI_OPT_CONNECT_TIMEOUT, APP_DB_TIMEOUT);
    $db->options(MYSQLI_OPT_READ_TIMEOUT, APP_DB_TIMEOUT);
    $db->real_connect($cfg['host'], $cfg['user'], $cfg['password'], $cfg['name']);
    return $db;
}

// Whether this deployment uses PostgreSQL: its config names a pgbouncer host (a fleet without a
// PostgreSQL host has none).
function app_pg_configured(): bool
{
    return (app_config()['pg_host'] ?? '') !== '';
}

function app_pg_conninfo_value(string $value): string
{
    return "'" . str_replace(['\\', "'"], ['\\\\', "\\'"], $value) . "'";
}

// A connection to PostgreSQL through pgbouncer as the app's own role.
function app_pg(): PgSql\Connection
{
    $cfg = app_config();
    $parts = [];
    foreach (['host' => 'pg_host', 'port' => 'pg_port', 'dbname' => 'pg_name', 'user' => 'pg_user',
              'password' => 'pg_password'] as $key => $name) {
        $parts[] = $key . '=' . app_pg_conninfo_value((string) ($cfg[$name] ?? ''));
    }
    $parts[] = 'connect_timeout=' . APP_DB_TIMEOUT;
    $parts[] = "application_name='mayday-sample-app'";
    $conn = @pg_connect(implode(' ', $parts), PGSQL_CONNECT_FORCE_NEW);
    if ($conn === false) {
        throw new RuntimeException('postgresql connection failed');
    }
    return $conn;
}

// One statement with a deadline on the client side: a paused pgbouncer holds queries without
// answering, and libpq has no query timeout of its own.
function app_pg_query(PgSql\Connection $conn, string $sql, array $params): array
{
    if (!pg_send_query_params($conn, $sql, $params)) {
        throw new RuntimeException('postgresql query not sent');
    }
    $socket = pg_socket($conn);
    $deadline = microtime(true) + APP_DB_TIMEOUT;
    while (pg_connection_busy($conn)) {
        $left = $deadline - microtime(true);
        if ($left <= 0) {
            // pg_close and pg_cancel_query both wait for the answer: end the connection first.
            socket_shutdown(socket_import_stream($socket), 2);
            pg_close($conn);
            throw new RuntimeException('postgresql did not answer in time');
        }
        $read = [$socket];
        $write = $except = null;
        @stream_select($read, $write, $except, (int) $left, (int) (($left - (int) $left) * 1e6));
        if (!pg_consume_input($conn)) {
            throw new RuntimeException('postgresql connection lost');
        }
    }
    $result = pg_get_result($conn);
    while (pg_get_result($conn) !== false) {
        // drain: one statement, one result
    }
    if ($result === false || pg_result_status($result) !== PGSQL_TUPLES_OK) {
        throw new RuntimeException('postgresql query failed');
    }
    return pg_fetch_all($result) ?: [];
}
