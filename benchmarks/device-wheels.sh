#!/usr/bin/env bash
# Wheels for running edgetune's GPU tests and benchmarks on a machine with no network
# (Python 3.12, torch/transformers/peft/accelerate already installed there).
#   benchmarks/device-wheels.sh        # from the project root, on a machine with PyPI access
# Writes four folders that git ignores, each small enough to carry in one call:
#   .whlA  bitsandbytes, torchao, hf_transfer              (Unsloth's binary needs)
#   .whlB  unsloth, unsloth_zoo, trl 1.15 and their pure-Python needs
#   .whlC  llama-cpp-python (the locally built wheel from pip's cache, see Makefile), model-signing
#          and the rest of edgetune's own needs, so a GPU run can also convert, bundle and sign.
#   .whlD  matplotlib and its needs (the bundle's eval chart), numpy excepted (the device's own)
# Install on the device, A in one call, then B and C in the next (the machine stays warm ~30 s):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target $HOME/site .whlA/*.whl
#   python3 -m pip install -q --no-index --no-deps --no-compile --target $HOME/site .whlB/*.whl .whlC/*.whl
#   python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target $HOME/site .whlC/llama_cpp_python*.whl
#   (the last line again, alone: pip --target skips llama.cpp's bin/ tools when bin/ exists).
#   .whlD only where the device lacks matplotlib (the H100 image has 3.11.2).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
for d in .whlA .whlB .whlC .whlD; do rm -rf "$d"; mkdir -p "$d"; done
plat=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
A=("bitsandbytes==0.50.2" "torchao==0.18.0" "hf_transfer==0.1.9")
B=("unsloth==2026.10.9" "unsloth_zoo==2026.10.9" "trl==1.15.0" "datasets==4.8.5" "tyro==1.0.17"
   "docstring-parser==0.18.0" "shtab==1.13.0" "typeguard==4.6.0" "msgspec==0.22.0"
   "cut_cross_entropy==25.1.1" "diffusers==0.42.1" "json5==0.17.3"
   "nest-asyncio==1.6.0" "structlog==26.1.0" "dill==0.4.1" "multiprocess==0.70.19"
   "pydantic==2.14.3" "pydantic-core==2.50.4" "annotated-types==0.8.0"
   "typing-inspection==0.4.5" "fsspec==2026.9.0")
C=("model-signing==1.1.1" "sigstore==4.5.1" "sigstore-models==0.0.6" "sigstore-rekor-types==0.0.18"
   "in-toto-attestation==0.9.3" "tuf==7.0.1" "securesystemslib==1.6.0" "id==1.6.1"
   "rfc3161-client==1.0.9" "rfc8785" "pyjwt" "platformdirs" "asn1crypto" "blake3"
   "cryptography==50.0.2" "cffi" "pycparser" "pyopenssl==26.4.0" "jsonschema==4.26.0"
   "jsonschema-specifications" "referencing" "rpds-py" "diskcache")
D=("matplotlib==3.11.2" "contourpy==1.4.0" "cycler==0.12.1" "fonttools==4.68.0"
   "kiwisolver==1.5.1" "pillow==13.0.0" "pyparsing==3.3.3" "python-dateutil==4.0.0" "tzdata")
for p in "${A[@]}"; do python3 -m pip download -q "${plat[@]}" -d .whlA "$p"; done
for p in "${B[@]}"; do python3 -m pip download -q "${plat[@]}" -d .whlB "$p"; done
for p in "${C[@]}"; do python3 -m pip download -q "${plat[@]}" -d .whlC "$p"; done
for p in "${D[@]}"; do python3 -m pip download -q "${plat[@]}" -d .whlD "$p"; done
# llama-cpp-python has no wheel on PyPI; `make setup` builds one (ctypes, so any CPython 3 loads it).
llama=$(find "${PIP_CACHE_DIR:-$HOME/.cache/pip}" -name 'llama_cpp_python-0.3.36-*.whl' | head -1)
[ -n "$llama" ] || { echo "no llama-cpp-python wheel in pip's cache: run make setup first" >&2; exit 1; }
cp "$llama" .whlC/
# gguf-py from the llama.cpp sdist (what make setup installs), as a wheel.
python3 -m pip wheel -q --no-deps -w .whlC .cache/llama-src/*/vendor/llama.cpp/gguf-py
du -sh .whlA .whlB .whlC .whlD
