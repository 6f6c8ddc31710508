# Source on the GPU machine after installing the wheel sets (see device-wheels.sh):
#   . benchmarks/device-env.sh
# edgetune runs from the checkout (no pip install there: no network); the converter travels as
# the carried folder .venv/share/edgetune/llama.cpp.
export PYTHONPATH=$HOME/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
       EDGETUNE_LLAMA_CPP_DIR=$PWD/.venv/share/edgetune/llama.cpp \
       TRANSFORMERS_VERBOSITY=error HF_DATASETS_DISABLE_PROGRESS_BARS=1
