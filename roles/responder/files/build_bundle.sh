#!/usr/bin/env bash
# Runs on the controller (the responder role delegates it to localhost): the responder's bundle, a tarball of the
# wheels of its venv and of the collections its runs need, so the host installs with no access to PyPI or Galaxy.
#   build_bundle.sh CACHE_DIR COLLECTION_ROOT PYTHON "PACKAGE..." "COLLECTION..."
# Prints the tarball's path. The tarball is byte-identical for the same inputs (sorted, mtime 0, gzip -n), so
# the role's copy reports a change only when something in it changed.
set -euo pipefail
cache=$1 root=$2 python=$3
read -r -a packages <<<"$4"
read -r -a collections <<<"$5"
stage="$cache/stage"
rm -rf "$stage"
mkdir -p "$stage/wheels" "$stage/collections/ansible_collections" "$cache/build"
"$python" -m pip download --quiet --disable-pip-version-check --dest "$stage/wheels" "${packages[@]}" >&2
galaxy="$(dirname "$python")/ansible-galaxy"
[[ -x "$galaxy" ]] || galaxy=ansible-galaxy
rm -f "$cache"/build/*.tar.gz
"$galaxy" collection build --force --output-path "$cache/build" "$root" >&2
"$galaxy" collection install --offline --no-deps --force -p "$stage/collections" "$cache"/build/*.tar.gz >&2
for fqcn in "${collections[@]}"; do
  path=$("$galaxy" collection list "$fqcn" --format json 2>/dev/null \
    | "$python" -c 'import json,sys; found=[p for p, c in json.load(sys.stdin).items() if c]; print(found[0] if found else "")')
  namespace=${fqcn%%.*} name=${fqcn#*.}
  [[ -n "$path" && -d "$path/$namespace/$name" ]] \
    || { echo "build_bundle: collection $fqcn is not installed on the controller (responder_collections)" >&2; exit 2; }
  mkdir -p "$stage/collections/ansible_collections/$namespace"
  cp -a "$path/$namespace/$name" "$stage/collections/ansible_collections/$namespace/$name"
done
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ --exclude='*.pyc' \
  -C "$stage" -cf - wheels collections | gzip -n >"$cache/bundle.tar.gz.new"
mv "$cache/bundle.tar.gz.new" "$cache/bundle.tar.gz"
rm -rf "$stage"
echo "$cache/bundle.tar.gz"
