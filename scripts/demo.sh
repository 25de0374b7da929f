#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, then run `l2l demo`.
set -e
source "$(dirname "$0")/env.sh"
exec l2l demo "$@"
