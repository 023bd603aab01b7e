#!/usr/bin/env bash
# Does an exported model run where only torch, transformers and safetensors are installed?
#
#   bash tools/check_hf_export_venv.sh                 # export a tiny random model, then check it
#   bash tools/check_hf_export_venv.sh FOLDER          # check an existing export (generation only)
#
# Creates a throwaway venv (VENV_DIR, default a new temporary folder, deleted at the end unless
# KEEP_VENV=1) with `pip install torch==2.13.0 transformers safetensors` (TORCH_SPEC and
# TRANSFORMERS_SPEC change the pins, say TRANSFORMERS_SPEC="transformers==5.17.0"), then, from an
# empty folder and without this checkout on the path, loads the model with AutoTokenizer +
# AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True) and generates. For the
# exported tiny model it also checks that the logits equal those of our megatron-core model
# (written next to the export by this checkout's Python, PROJECT_PYTHON, default python3).
# Prints the versions, the generated ids and the time each step took; exits non-zero on failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROJECT_PYTHON="${PROJECT_PYTHON:-python3}"
VENV_PYTHON="${VENV_PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC:-transformers}"
WORK="$(mktemp -d)"
VENV_DIR="${VENV_DIR:-$WORK/venv}"
cleanup() {
  if [ "${KEEP_VENV:-0}" != 1 ]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT
start=$(date +%s)
step() { echo "[$(( $(date +%s) - start )) s] $*"; }

FOLDER="${1:-}"
EXPECTED=""
if [ -z "$FOLDER" ]; then
  FOLDER="$WORK/export"
  EXPECTED="$WORK/expected.json"
  step "exporting a tiny random PonderLM-2 (gpt_neox, K=1) with $PROJECT_PYTHON"
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PROJECT_PYTHON" - "$FOLDER" "$EXPECTED" <<'PY'
import json, os, sys
import torch
from tokenizers import Tokenizer, decoders, models
from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.hf import save_pretrained
from megatron_ponder.model import build_model
from megatron_ponder import mcore

folder, expected = sys.argv[1:]
mcore.init(single_process=True)
torch.manual_seed(0)
# A character tokenizer: id 0 end of text, 1..95 printable ASCII.
vocab = {"<|endoftext|>": 0, **{chr(32 + i): i + 1 for i in range(95)}}
tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
tokenizer.add_special_tokens(["<|endoftext|>"])
tokenizer.decoder = decoders.Fuse()
os.makedirs(folder + "_tokenizer", exist_ok=True)
tokenizer_file = os.path.join(folder + "_tokenizer", "tokenizer.json")
tokenizer.save(tokenizer_file)
model = build_model(ModelConfig(arch="gpt_neox", num_layers=2, hidden_size=32,
                                num_attention_heads=4, vocab_size=96),
                    PonderConfig(num_latent_thoughts=1, jacobi_iterations=2)).eval()
save_pretrained(model, folder, tokenizer_file=tokenizer_file)
ids = [tokenizer.encode("Once upon a time").ids]
with torch.no_grad():
    logits = model(torch.tensor(ids))  # the training forward: logits [B, L, V]
with open(expected, "w") as f:
    json.dump({"ids": ids, "logits": logits.tolist()}, f)
PY
fi
[ -f "$FOLDER/config.json" ] || { echo "error: $FOLDER/config.json not found" >&2; exit 1; }

step "creating $VENV_DIR ($TORCH_SPEC, $TRANSFORMERS_SPEC, safetensors)"
"$VENV_PYTHON" -m venv "$VENV_DIR"
"$VENV_DIR/bin/pip" install -q "$TORCH_SPEC" "$TRANSFORMERS_SPEC" safetensors
step "installed: $("$VENV_DIR/bin/pip" freeze | tr '\n' ' ')"

step "loading and generating in the venv"
mkdir -p "$WORK/empty"
cd "$WORK/empty"
env -u PYTHONPATH HF_HUB_OFFLINE=1 HF_MODULES_CACHE="$WORK/modules" "$VENV_DIR/bin/python" - "$FOLDER" "$EXPECTED" <<'PY'
import importlib.util, json, sys
import torch, transformers

folder, expected = sys.argv[1], sys.argv[2]
for name in ("megatron", "megatron_ponder"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable in the fresh venv"
print("torch", torch.__version__, "transformers", transformers.__version__)
tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
print(type(model).__name__, "K =", model.config.num_latent_thoughts, "arch =", model.config.arch)
inputs = tokenizer("Once upon a time", return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
assert output.shape == (1, inputs["input_ids"].shape[1] + 8), output.shape
print("generated ids", output[0, inputs["input_ids"].shape[1]:].tolist())
print("text", repr(tokenizer.decode(output[0])))
if expected:
    with open(expected) as f:
        reference = json.load(f)
    assert inputs["input_ids"].tolist() == reference["ids"], "tokenization differs"
    with torch.no_grad():
        logits = model(torch.tensor(reference["ids"])).logits
    diff = (logits - torch.tensor(reference["logits"])).abs().max().item()
    print(f"max |logits - megatron logits| = {diff:.2e}")
    assert diff < 1e-4, diff
print("OK")
PY
step "done"
