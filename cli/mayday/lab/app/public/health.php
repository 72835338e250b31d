<?php
// GET /health-check: 200 only when this release runs and its database answers.
require __DIR__ . '/../lib/db.php';

header('Content-Type: application/json');
header('Cache-Control: no-store');
$release = basename(dirname(__DIR__));
try {
    // The API configuration is shared by all releases: a broken one breaks every release.
    $api = require '/var/www/app/shared/config/api.php';
    $row = app_db()->query('SELECT 1 AS ok')->fetch_assoc();
    $healthy = ((int) $row['ok']) === 1 && !empty($api['enabled']);
} catch (Throwable $e) {
    $healthy = false;
}
http_response_code($healthy ? 200 : 500);
echo json_encode([
    'status' => $healthy ? 'healthy' : 'unhealthy',
    'version' => $release,
]), "\n";
