#!/usr/bin/env bash
# Create the MONAI Label environment that tests/monailabel/test_monailabel_app.py and check_monailabel_app.py run in:
# .venv-monailabel/ in the repository root (or the folder given as $1) with monailabel 0.8.5, the main venv's CPU torch
# 2.13.0 and the bundle's own dependencies (requirements.txt, less the pins requirements-monailabel.txt explains).
# Separate from .venv: MONAI Label pulls a heavy dependency set with older numpy, pydicom and jsonschema.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv-monailabel}"
bundle_reqs="$(mktemp)"
trap 'rm -f "$bundle_reqs"' EXIT
grep -Ev '^(numpy|pydicom|jsonschema|highdicom)==' "$root/requirements.txt" > "$bundle_reqs"
python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$bundle_reqs" -r "$here/requirements-monailabel.txt"
if ! "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
    # PyPI's torchvision cannot load its C++ ops with CPU torch, and then fails at import: see the shim's docstring
    site="$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
    cp "$here/torchvision_cpu_shim.py" "$site/cstm_torchvision_cpu_shim.py"
    echo "import cstm_torchvision_cpu_shim" > "$site/cstm_torchvision_cpu_shim.pth"
fi
"$venv/bin/python" -c "import monailabel, torch, torchvision, numpy; print(f'{monailabel.__file__}: monailabel \
{monailabel.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {numpy.__version__}')"
