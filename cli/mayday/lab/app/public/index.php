<?php
// Landing page of the sample app: names the release it serves.
$release = basename(dirname(__DIR__));
header('Content-Type: text/html; charset=utf-8');
echo '<!doctype html><title>mayday sample app</title><link rel="stylesheet" href="/assets/app.css">';
echo '<h1>mayday sample app</h1>';
echo '<p>release ' . htmlspecialchars($release) . '</p>', "\n";
