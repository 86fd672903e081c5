#!/bin/sh
# The image's entry point is `sagaray`: `docker run IMAGE serve --port 8080` runs
# `sagaray serve --port 8080`, and no arguments run `sagaray serve`. A first argument that
# is a program on PATH (ray, sagaray, sh, ...) runs as given instead, so the Ray head and
# workers of the compose file run `ray start ...` from this same image.
# tests/test_deploy_manifests.py runs this script against the real executables.
set -e
if [ "$#" -eq 0 ]; then
    set -- serve
fi
case "$1" in
    -*) exec sagaray "$@" ;;
esac
if command -v "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec sagaray "$@"
