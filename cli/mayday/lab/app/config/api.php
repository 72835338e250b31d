<?php
// API configuration of the sample app. Deployed to /var/www/app/shared/config/api.php, shared by
// every release; the deploy helper keeps a copy of what it deployed (see the lab's README).
return [
    'enabled' => true,
    'rate_limit_per_minute' => 600,
    'webhook_timeout_seconds' => 5,
];
