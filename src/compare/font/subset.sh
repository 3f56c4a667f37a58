#!/usr/bin/env bash
# Makes DejaVuSans.ttf, the font `sae-onnx compare --plot` draws its text with: DejaVu Sans 2.37
# (Debian's fonts-dejavu-core) cut down to Latin, Greek, and the punctuation and math signs that
# labels use, so the binary carries 44 KB of font instead of 760 KB. Hinting is dropped (ab_glyph
# does not use it); kerning is kept. Needs fonttools (`pip install fonttools`).
#   src/compare/font/subset.sh [DejaVuSans.ttf]   (default: where fonts-dejavu-core installs it)
set -euo pipefail
source_ttf=${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
cd "$(dirname "$0")"
pyftsubset "$source_ttf" \
    --unicodes="U+0020-007E,U+00A0-017F,U+0370-03FF,U+2010-2027,U+2030-203A,U+2190-2193,U+2212,U+221E,U+2248,U+2260,U+2264-2265" \
    --layout-features=kern --no-hinting --output-file=DejaVuSans.ttf
