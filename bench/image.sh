#!/usr/bin/env bash
# Image benchmark (see bench/image.rs): registry → bootable root image, Pitwall against
# `skopeo copy` + `umoci unpack` + `mkfs.ext4 -d`. Builds in release, prints JSON on stdout.
#
# The Debian minbase image is built once with mmdebstrap (needs the Debian mirror of
# /etc/apt/sources.list*) and kept as a one-layer OCI layout (gzip -6, as docker's own
# debian images) under $PITWALL_BENCH_DIR (default /var/cache/pitwall/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${PITWALL_BENCH_DIR:-/var/cache/pitwall/bench}"
layout="$dir/debian-minbase.oci"
mkdir -p "$dir"
for tool in mmdebstrap skopeo umoci mkfs.ext4 docker-registry; do
    command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install ${tool/mkfs.ext4/e2fsprogs}" >&2; exit 1; }
done

if [ ! -f "$layout/index.json" ]; then
    if [ ! -f "$dir/minbase.tar" ]; then
        mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p; s/^deb \(\[[^]]*\] \)\?\([^ ]*\) .*/\2/p' \
            /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -v security | head -1)
        echo "building Debian bookworm minbase from ${mirror:-the default mirror}" >&2
        mmdebstrap --variant=minbase bookworm "$dir/minbase.tar.part" ${mirror:+"$mirror"} >&2
        mv "$dir/minbase.tar.part" "$dir/minbase.tar"
    fi
    rm -rf "$layout.part"
    mkdir -p "$layout.part/blobs/sha256"
    b="$layout.part/blobs/sha256"
    gzip -n -6 -c "$dir/minbase.tar" > "$b/layer"
    diff_id=$(sha256sum < "$dir/minbase.tar" | cut -d' ' -f1)
    layer=$(sha256sum < "$b/layer" | cut -d' ' -f1)
    layer_size=$(stat -c %s "$b/layer")
    mv "$b/layer" "$b/$layer"
    blob() { # writes stdin as a blob, prints "digest size"
        cat > "$b/tmp"
        local d
        d=$(sha256sum < "$b/tmp" | cut -d' ' -f1)
        mv "$b/tmp" "$b/$d"
        echo "$d $(stat -c %s "$b/$d")"
    }
    read -r config config_size < <(printf '%s' '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/bash"]},"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]}}' | blob)
    read -r manifest manifest_size < <(printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer"'","size":'"$layer_size"'}]}' | blob)
    printf '%s' '{"imageLayoutVersion":"1.0.0"}' > "$layout.part/oci-layout"
    printf '%s' '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest"'","size":'"$manifest_size"',"annotations":{"org.opencontainers.image.ref.name":"minbase"}}]}' > "$layout.part/index.json"
    mv "$layout.part" "$layout"
fi

cargo build --release --quiet -p pitwall-bench --bin bench-image
exec "${CARGO_TARGET_DIR:-target}/release/bench-image" "${1:-5}" "$layout"
