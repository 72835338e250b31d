<?php
// GET /profile.php?id=N: a user profile, cached in Redis (profile:<id>, 10 minutes) and as a page in
// the app cache directory; the visitor's session lives in Redis (sess:<id>).
require __DIR__ . '/../lib/cache.php';

$id = max(1, (int) ($_GET['id'] ?? 1));
app_session_start();
$_SESSION['views'] = ($_SESSION['views'] ?? 0) + 1;
$redis = app_redis();
$key = "profile:$id";
$profile = $redis !== null ? $redis->get($key) : false;
$source = 'cache';
if ($profile === false) {
    $profile = json_encode(['id' => $id, 'name' => "user $id", 'built_at' => gmdate('c')]);
    $source = 'built';
    if ($redis !== null) {
        $redis->setex($key, 600, $profile);
    }
}
$page = '<!doctype html><title>profile ' . $id . '</title><pre>' . htmlspecialchars($profile) . "</pre>\n";
app_page_cache_put("profile-$id.html", $page);
header('Content-Type: text/html; charset=utf-8');
header('X-Cache: ' . $source);
echo $page;
