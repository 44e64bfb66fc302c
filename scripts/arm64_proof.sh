#!/usr/bin/env bash
# The runner on the Raspberry Pi's architecture, emulated: an arm64 Debian root (debootstrap, first stage:
# packages fetched and unpacked, nothing of arm64 executed by debootstrap), the aarch64 numpy/onnxruntime/Pillow
# wheels installed into it with pip (--platform manylinux2014_aarch64), and edgeq/runner.py run there by
# qemu-user (qemu-aarch64-static -L ROOT: the arm64 python3 with the root as its library prefix).
# info, bench, compare and predict on a zoo artifact must succeed; their JSON goes to reports/arm64-emulated/.
# Timings under emulation say nothing about a Pi's speed: every file here is labelled emulated.
#
#   bash scripts/arm64_proof.sh [ROOT]      (default ROOT /var/tmp/edgeq-arm64-root; needs root for apt-get and
#                                            debootstrap; EDGEQ_ARM64_OUT=DIR writes elsewhere; ~3 min here)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-/var/tmp/edgeq-arm64-root}
OUT=${EDGEQ_ARM64_OUT:-reports/arm64-emulated}
WORK=$(mktemp -d /tmp/edgeq-arm64.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null || MISSING="$MISSING $2"; }
MISSING=""
need qemu-aarch64-static qemu-user-static
need debootstrap debootstrap
if [ -n "$MISSING" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $MISSING >/dev/null
fi

if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  echo "arm64 root: debootstrap --foreign bookworm into $ROOT" >&2
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,libstdc++6 bookworm "$ROOT" \
    http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 || { tail -5 "$WORK/debootstrap.log"; exit 1; }
  # the first stage unpacks only the base set; unpack the rest (python3 and its libraries) the same way
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
fi
# qemu-user 7.2 passes the x86 host's /proc/cpuinfo through, and onnxruntime's CPU detection (cpuinfo) crashes
# parsing it on arm64 (a segfault while loading the library); with -L, qemu reads $ROOT/proc/cpuinfo instead,
# so put there what a Raspberry Pi 4 reports (4x Cortex-A72, part 0xd08, no dot-product), marked as a stand-in
mkdir -p "$ROOT/proc"
{
  for i in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
  done
  printf 'Model\t\t: emulated arm64, Cortex-A72 stand-in (qemu-user; not a Raspberry Pi)\n'
} >"$ROOT/proc/cpuinfo"
SITE="$ROOT/opt/edgeq-runner-site"
if [ ! -d "$SITE/onnxruntime" ]; then
  echo "arm64 root: pip install the aarch64 wheels of numpy, onnxruntime, pillow into $SITE" >&2
  rm -rf "$SITE"
  # Debian bookworm has glibc 2.36: every manylinux tag up to it fits (recent onnxruntime wheels are 2_27/2_28)
  platforms=(--platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64
             --platform manylinux2014_aarch64)
  python -m pip install -q --target "$SITE" "${platforms[@]}" --python-version 3.11 \
    --implementation cp --only-binary=:all: "numpy>=1.26,<2.4" pillow
  python -m pip install -q --target "$SITE" "${platforms[@]}" --python-version 3.11 \
    --implementation cp --only-binary=:all: --no-deps "onnxruntime>=1.22"
fi

# a zoo artifact and an input, made on this (x86) machine as a user would before copying them to a Pi
edgeq quantize --model zoo:mobilevit_xxs --calib zoo --recipe w8a8-fast -o "$WORK/m.edgeq" --json >/dev/null
edgeq export "$WORK/m.edgeq" --to onnx --precision int8 -o "$WORK/int8.onnx" --json >/dev/null
edgeq export "$WORK/m.edgeq" --to onnx --precision fp32 -o "$WORK/fp32.onnx" --json >/dev/null
python - "$WORK" <<'EOF'
import sys
import numpy as np
from PIL import Image
from edgeq.models.zoo import load_split
images, labels = load_split("test")
Image.fromarray(images[0]).save(f"{sys.argv[1]}/shoe.png")
np.save(f"{sys.argv[1]}/shoe.npy", images[0])
print(int(labels[0]), file=open(f"{sys.argv[1]}/label.txt", "w"))
EOF
cp edgeq/runner.py "$WORK/edgeq_runner.py"

arm64() {   # the runner under qemu-user, from the work directory, with the arm64 site-packages
  (cd "$WORK" && PYTHONPATH="$SITE" qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" -I -c \
    "import sys; sys.path.insert(0, '$SITE'); sys.argv = ['edgeq_runner.py'] + sys.argv[1:]; import runpy; \
runpy.run_path('edgeq_runner.py', run_name='__main__')" "$@")
}
mkdir -p "$OUT"
started=$(date +%s)
arm64 --json info >"$WORK/info.json"
arm64 --json bench int8.onnx --runs 20 --warmup 3 --threads 2 >"$WORK/bench.json"
arm64 --json compare int8.onnx fp32.onnx --runs 20 --warmup 2 --block 5 --threads 2 >"$WORK/compare.json"
arm64 --json predict int8.onnx --input shoe.png --top 3 >"$WORK/predict-png.json"
arm64 --json predict int8.onnx --input shoe.npy --top 3 >"$WORK/predict-npy.json"
x86=$(cd "$WORK" && python edgeq_runner.py --json predict int8.onnx --input shoe.png --top 3)
python - "$WORK" "$OUT" "$(( $(date +%s) - started ))" "$x86" <<'EOF'
import json, sys
from pathlib import Path
from edgeq.runner import cpu_model
work, out, seconds, x86 = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
label = (f"EMULATED: arm64 (aarch64) Debian root run by qemu-user on an x86 host ({cpu_model()});"
         f" not a Raspberry Pi; timings measure the emulator, not a device")
docs = {name: json.loads((work / f"{name}.json").read_text())
        for name in ("info", "bench", "compare", "predict-png", "predict-npy")}
info = docs["info"]
assert info["machine"]["machine"] == "aarch64", info["machine"]
assert info["onnxruntime"], info
bench = docs["bench"]["batches"][0]
same_top1 = docs["predict-png"]["top"][0][0]["class"] == x86["top"][0][0]["class"] == docs["predict-npy"]["top"][0][0]["class"]
assert same_top1, (docs["predict-png"], x86)
for name, doc in docs.items():
    (out / f"{name}.json").write_text(json.dumps({"label": label, **doc}, indent=1) + "\n")
medians = {m["artifact"]: sorted(m["samples_ms"])[len(m["samples_ms"]) // 2] for m in docs["compare"]["models"]}
lines = ["# edgeq-runner on arm64, emulated", "", label + ".", "",
         f"- info: {info['machine']['machine']}, Python {info['machine']['python']}, numpy {info['numpy']}, "
         f"onnxruntime {info['onnxruntime']} ({', '.join(info['providers'])}), ISA flags {info['machine']['isa']}",
         f"- bench int8.onnx (zoo:mobilevit_xxs w8a8-fast, 1x1x32x32): p50 {bench['p50_ms']} ms over {bench['runs']} "
         f"runs under emulation",
         f"- compare: medians {', '.join(f'{k} {v:.1f} ms' for k, v in medians.items())} (emulated)",
         f"- predict shoe.png / shoe.npy: top-1 {docs['predict-png']['top'][0][0]['label']} "
         f"({docs['predict-png']['top'][0][0]['probability']:.3f}), the same class as on x86; "
         f"true label index {(work / 'label.txt').read_text().strip()}",
         f"- all four commands in {seconds} s", ""]
(out / "README.md").write_text("\n".join(lines))
print("\n".join(lines))
EOF
