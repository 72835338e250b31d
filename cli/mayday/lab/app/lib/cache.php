<?php
// The app's caches, both optional (without them the app works, only slower): Redis on this host
// (profile:<id> entries, sessions under sess:), reached with the settings the lab's set-up writes
// outside the releases, and a page cache directory shared by every release.
const APP_CACHE_DIR = '/var/www/app/shared/cache';
const APP_REDIS_INI = '/etc/mayday-app/redis.ini';

function app_redis_config(): ?array
{
    $cfg = @parse_ini_file(APP_REDIS_INI);
    return ($cfg === false || !class_exists('Redis')) ? null : $cfg;
}

// A connection per request, or null when Redis is not configured or does not answer within a second.
function app_redis(): ?Redis
{
    static $redis = false;
    if ($redis !== false) {
        return $redis;
    }
    $redis = null;
    $cfg = app_redis_config();
    if ($cfg === null) {
        return null;
    }
    try {
        $conn = new Redis();
        $conn->connect($cfg['host'] ?? '127.0.0.1', (int) ($cfg['port'] ?? 6379), 1.0);
        if (($cfg['password'] ?? '') !== '') {
            $conn->auth($cfg['password']);
        }
        $conn->select((int) ($cfg['db'] ?? 0));
        $redis = $conn;
    } catch (Throwable $e) {
        $redis = null;
    }
    return $redis;
}

// 'ok', 'down' (configured but not answering) or 'not used'.
function app_redis_state(): string
{
    if (app_redis_config() === null) {
        return 'not used';
    }
    return app_redis() === null ? 'down' : 'ok';
}

// PHP sessions in Redis under sess:<id> (a FLUSHDB would log every visitor out).
function app_session_start(): void
{
    $cfg = app_redis_config();
    if ($cfg !== null) {
        ini_set('session.save_handler', 'redis');
        ini_set('session.save_path', sprintf('tcp://%s:%d?database=%d&prefix=sess:&timeout=1&auth=%s',
            $cfg['host'] ?? '127.0.0.1', (int) ($cfg['port'] ?? 6379), (int) ($cfg['db'] ?? 0),
            rawurlencode((string) ($cfg['password'] ?? ''))));
    }
    @session_start();
}

// A rendered page kept in the cache directory (written whole, then renamed into place).
function app_page_cache_put(string $name, string $html): void
{
    if (!is_dir(APP_CACHE_DIR) || !is_writable(APP_CACHE_DIR)) {
        return;
    }
    $tmp = @tempnam(APP_CACHE_DIR, '.tmp-');
    if ($tmp !== false && @file_put_contents($tmp, $html) !== false) {
        @rename($tmp, APP_CACHE_DIR . '/' . basename($name));
    } elseif ($tmp !== false) {
        @unlink($tmp);
    }
}

// Lab knobs for the performance scenario, each adding that many milliseconds to a request: a slow
// release (a .lab-slow-ms file in the release) and a bad cache entry (the Redis key lab:slow-ms).
function app_lab_slowness(string $release_dir): void
{
    $ms = (int) @file_get_contents($release_dir . '/.lab-slow-ms');
    $redis = app_redis();
    if ($redis !== null) {
        $ms += (int) $redis->get('lab:slow-ms');
    }
    if ($ms > 0) {
        usleep(min($ms, 30000) * 1000);
    }
}
