#!/usr/bin/env bash
# Installs what the controller needs from Debian and starts a Docker engine when none answers.
# Safe to run again: every step is skipped when already satisfied.
set -euo pipefail

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
# ssh and ssh-keygen: the lab's SSH path (inventories/lab-ssh, the key `mayday lab up` generates).
command -v ssh-keygen >/dev/null 2>&1 || need_pkgs+=(openssh-client)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "host-deps: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# Debian's client, not an older one that may sit first on PATH.
docker_cli=/usr/bin/docker
if ! "$docker_cli" info >/dev/null 2>&1; then
  echo "host-deps: starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/mayday-dockerd.log 2>&1 &
  for _ in $(seq 1 240); do  # up to 2 minutes: an engine killed uncleanly takes longer to come back
    "$docker_cli" info >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$docker_cli" info >/dev/null 2>&1 || { echo "host-deps: dockerd did not start, see /var/log/mayday-dockerd.log" >&2; exit 1; }
fi

# Every lab container runs its own systemd, which holds several inotify instances: the kernel's
# default of 128 per user runs out near 20 containers and systemd then never finishes booting.
if [ "$(sysctl -n fs.inotify.max_user_instances 2>/dev/null || echo 0)" -lt 1024 ]; then
  sysctl -qw fs.inotify.max_user_instances=1024 || echo "host-deps: could not raise fs.inotify.max_user_instances" >&2
fi
