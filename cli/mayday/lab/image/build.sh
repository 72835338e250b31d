#!/usr/bin/env bash
# Builds the lab images from Debian's archive alone: debootstrap -> docker import -> docker build.
# Images are tagged by a hash of their inputs, so unchanged inputs skip the build.
# Prints nothing but progress; the tags it guarantees are mayday-lab-{web,db,pg,mon}:latest.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
docker=/usr/bin/docker
suite=bookworm
mirror=http://deb.debian.org/debian
base_pkgs=systemd,systemd-sysv,python3,python3-apt,sudo,iproute2,ca-certificates,curl,netbase

base_hash=$(printf '%s\n' "$suite" "$base_pkgs" | sha256sum | cut -c1-12)
base_image="mayday-lab-base:$base_hash"
layer_hash=$( (echo "$base_hash"; cat "$here"/Dockerfile "$here"/*.conf "$here"/*.cnf "$here"/*.service) | sha256sum | cut -c1-12)

if ! "$docker" image inspect "$base_image" >/dev/null 2>&1; then
  echo "lab image: debootstrap $suite (about a minute)"
  rootfs=$(mktemp -d /var/tmp/mayday-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include="$base_pkgs" "$suite" "$rootfs" "$mirror" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | "$docker" import - "$base_image" >/dev/null
fi

for target in web db pg mon; do
  image="mayday-lab-$target"
  if ! "$docker" image inspect "$image:$layer_hash" >/dev/null 2>&1; then
    echo "lab image: building $image:$layer_hash"
    "$docker" build -q --network host --build-arg BASE_IMAGE="$base_image" \
      --target "$target" -t "$image:$layer_hash" "$here" >/dev/null
  fi
  "$docker" tag "$image:$layer_hash" "$image:latest"
done
echo "lab image: ready ($layer_hash)"
