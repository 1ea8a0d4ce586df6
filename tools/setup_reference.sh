#!/usr/bin/env bash
# Builds the authors' DiNAT-IR code on natten 0.14.6 CPU kernels, to compare against in
# benchmarks and to regenerate reference fixtures:
#   OFFICIAL_SRC=<checkout or git dir of github.com/HanzhouLiu/DiNAT-IR> REF_DIR=<dir> setup_reference.sh
# Makes $REF_DIR/official (the authors' tree) and $REF_DIR/venv (torch 2.13.0 CPU, natten 0.14.6,
# einops, opencv, scikit-image). About 5-10 minutes on 2 cores, once.
# natten 0.14.6 does not compile against torch 2.13 as released; two small source edits make
# its CPU kernels build: dispatch float32 only, and a plain loop in place of at::vec::map2.
# Then, from the project root: $REF_DIR/venv/bin/python tools/make_reference_data.py \
#   --official $REF_DIR/official --out tests/data/reference
# and, in Python with that venv (tools/ on sys.path): from make_reference_data import load_official;
# arch = load_official("$REF_DIR/official"); arch.RestoreDiNATLocal(dim=48, chan_adapt=True, mode="hybrid")
set -euo pipefail
: "${OFFICIAL_SRC:?set OFFICIAL_SRC to a checkout (or git dir) of HanzhouLiu/DiNAT-IR}"
: "${REF_DIR:?set REF_DIR to the folder to build in}"
mkdir -p "$REF_DIR"; REF_DIR=$(cd "$REF_DIR" && pwd)
if [ ! -d "$REF_DIR/official/basicsr" ]; then
  mkdir -p "$REF_DIR/official"
  if [ -d "$OFFICIAL_SRC/basicsr" ]; then cp -r "$OFFICIAL_SRC/." "$REF_DIR/official/"
  else git -C "$OFFICIAL_SRC" archive HEAD | tar -x -C "$REF_DIR/official"; fi
fi
V="$REF_DIR/venv"
if [ ! -x "$V/bin/python" ] || ! "$V/bin/python" -c "import natten" 2>/dev/null; then
  python3 -m venv "$V"
  "$V/bin/pip" install -q torch==2.13.0 numpy setuptools wheel einops opencv-python-headless scikit-image
  SRC="$REF_DIR/natten-src"; rm -rf "$SRC" && mkdir -p "$SRC" && cd "$SRC"
  "$V/bin/pip" download -q --no-deps --no-build-isolation --no-binary :all: natten==0.14.6 -d .
  tar xzf natten-0.14.6.tar.gz && cd natten-0.14.6/src/natten/csrc/cpu
  for f in *.cpp; do
    python3 - "$f" <<'PY'
import sys
p = sys.argv[1]; lines = open(p).read().split('\n')
i = max(n for n, l in enumerate(lines) if l.startswith('#include'))
lines.insert(i + 1, '#undef AT_DISPATCH_FLOATING_TYPES\n#define AT_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...) '
             'AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__))')
open(p, 'w').write('\n'.join(lines))
PY
  done
  sed -i 's/at::vec::map2(\[a\](Vec& x, Vec& y) { return fmadd(a, x, y); }, _oaddr, _vaddr, _oaddr, dim);/{ const scalar_t av = attn.data()[attnOffset]; for (int dd = 0; dd < dim; ++dd) _oaddr[dd] += av * _vaddr[dd]; }/' natten1dav_cpu_kernel.cpp natten2dav_cpu_kernel.cpp
  cd "$SRC/natten-0.14.6" && MAX_JOBS=2 "$V/bin/pip" install -q --no-build-isolation .
fi
"$V/bin/python" -c "import natten; print('natten', natten.__version__, 'ready in $REF_DIR')"
