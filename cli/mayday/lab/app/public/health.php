<?php
// GET /health-check: 200 only when this release runs and every database it uses answers: MariaDB,
// and PostgreSQL through pgbouncer as the app's own role when the app's config names one (checked
// by writing and reading this host's heartbeat row). "checks" says which part failed.
require __DIR__ . '/../lib/db.php';
require __DIR__ . '/../lib/cache.php';

header('Content-Type: application/json');
header('Cache-Control: no-store');
$release = basename(dirname(__DIR__));
app_lab_slowness(dirname(__DIR__));
$checks = ['api' => 'failed', 'mariadb' => 'failed', 'postgresql' => 'failed'];
try {
    // The API configuration is shared by all releases: a broken one breaks every release.
    $api = require '/var/www/app/shared/config/api.php';
    $checks['api'] = !empty($api['enabled']) ? 'ok' : 'failed';
} catch (Throwable $e) {
    $checks['api'] = 'failed';
}
try {
    $row = app_db()->query('SELECT 1 AS ok')->fetch_assoc();
    $checks['mariadb'] = ((int) $row['ok']) === 1 ? 'ok' : 'failed';
} catch (Throwable $e) {
    $checks['mariadb'] = 'failed';
}
try {
    if (!app_pg_configured()) {
        $checks['postgresql'] = 'not used';
    } else {
        $rows = app_pg_query(app_pg(),
            'INSERT INTO web_heartbeats (host, release, hits, seen_at) VALUES ($1, $2, 1, now()) '
            . 'ON CONFLICT (host) DO UPDATE SET release = EXCLUDED.release, hits = web_heartbeats.hits + 1, '
            . 'seen_at = EXCLUDED.seen_at RETURNING hits',
            [gethostname(), $release]);
        $checks['postgresql'] = (count($rows) === 1 && (int) $rows[0]['hits'] >= 1) ? 'ok' : 'failed';
    }
} catch (Throwable $e) {
    $checks['postgresql'] = 'failed';
}
$failed = array_keys(array_filter($checks, fn ($state) => $state === 'failed'));
$healthy = $failed === [];
http_response_code($healthy ? 200 : 500);
echo json_encode([
    'status' => $healthy ? 'healthy' : 'unhealthy',
    'version' => $release,
    'checks' => $checks,
    'failed' => $failed,
    // A cache: Redis down makes the app slower, not unhealthy.
    'cache' => ['redis' => app_redis_state()],
]), "\n";
