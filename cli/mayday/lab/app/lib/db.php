<?php
// Database connection for the sample app; credentials live outside the release.
function app_db(): mysqli
{
    $cfg = parse_ini_file('/etc/mayday-app/db.ini');
    if ($cfg === false) {
        throw new RuntimeException('database config unreadable');
    }
    mysqli_report(MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT);
    $db = mysqli_init();
    $db->options(MYSQLI_OPT_CONNECT_TIMEOUT, 2);
    $db->real_connect($cfg['host'], $cfg['user'], $cfg['password'], $cfg['name']);
    return $db;
}
