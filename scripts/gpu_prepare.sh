#!/usr/bin/env bash
# Ready this checkout for scripts/gpu_check.sh on the lent GPU machine (run it here, before the
# device tool's run with carry [".gpu"]). That machine's image has Python 3.12 and a CUDA build
# of torch, but not nibabel, nilearn, MONAI, connected-components-3d or
# dynamic-network-architectures, and reaches no package registry: this downloads their
# Python 3.12 wheels into .gpu/whl (ignored by git), at the versions scripts/constraints.txt
# pins, the ones the test suite ran with.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
packages=(nibabel nilearn monai connected-components-3d dynamic-network-architectures)
pins=()
for name in "${packages[@]}"; do
    # constraints.txt may spell a name with _ for - and in any case (PEP 503 names match)
    pattern=$(echo "$name" | sed 's/[-_.]/[-_.]/g')
    pin=$(grep -i -E "^${pattern}==" "$root/scripts/constraints.txt" | head -1)
    [ -n "$pin" ] || { echo "no pin for $name in scripts/constraints.txt" >&2; exit 1; }
    pins+=("$pin")
done
rm -rf "$root/.gpu/whl"; mkdir -p "$root/.gpu/whl"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$root/.gpu/whl" "${pins[@]}"
ls "$root/.gpu/whl"
du -sh "$root/.gpu"
