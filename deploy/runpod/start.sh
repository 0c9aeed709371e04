#!/bin/sh
# The worker's entrypoint. With DOWNLOAD_MODELS=true and MODELS_DIR on a network volume,
# the first cold start fetches the models there (minutes) and leaves a marker; later
# cold starts, on any worker of the endpoint, find them and only load them.
set -eu
if [ "${DOWNLOAD_MODELS:-false}" = "true" ]; then
  marker="$MODELS_DIR/.downloaded-$(printf '%s %s' "${EMBEDDING_MODEL_NAME:-BAAI/bge-m3}" \
    "${RERANKER_MODEL_NAME:-BAAI/bge-reranker-v2-m3}" | tr -c 'A-Za-z0-9._-' '_')"
  if [ ! -e "$marker" ]; then
    mkdir -p "$MODELS_DIR"
    bge-serve download --to "$MODELS_DIR" >&2
    touch "$marker"
  fi
fi
exec bge-runpod-worker "$@"
