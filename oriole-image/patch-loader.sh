#!/usr/bin/env bash
# Patches OrioleDB's restore tool, orioledb_s3_loader.py, in place (run when the image is built).
#
# Upstream (beta12 to beta16 and the main branch at the time of writing) has, in
# download_unchanged_small_files():
#     for filename, checkpoint in file_checksums:
# file_checksums is a dict, so this unpacks each key as a pair and raises ValueError as soon as a
# restore needs small files from a checkpoint older than the previous one. The line a few lines
# above in download_unchanged_files() shows what was meant:
#     for filename, checkpoint in file_checksums.items():
# If upstream fixes it, there is nothing to patch and this says so; if the code around it changes
# so that neither form is found, the build fails, so that the patch is reviewed again.
#
# Usage: patch-loader.sh FILE
set -euo pipefail

file=${1:?usage: patch-loader.sh FILE}
bad='for filename, checkpoint in file_checksums:'
good='for filename, checkpoint in file_checksums.items():'

if grep -qF -- "$bad" "$file"; then
    n=$(grep -cF -- "$bad" "$file")
    sed -i 's/for filename, checkpoint in file_checksums:/for filename, checkpoint in file_checksums.items():/' "$file"
    echo "patch-loader: $file: replaced $n line(s) '$bad' with '$good'"
else
    echo "patch-loader: $file: no '$bad' line (fixed upstream?): nothing to patch"
fi
if grep -qF -- "$bad" "$file"; then
    echo "patch-loader: error: $file still has '$bad'" >&2
    exit 1
fi
if ! grep -qF -- "$good" "$file"; then
    echo "patch-loader: error: $file has no '$good' line: the restore tool changed; review this patch" >&2
    exit 1
fi
