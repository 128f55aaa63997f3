"""Gather what ``bench/gpu_check.py`` needs on a bare GPU machine that has torch and transformers but
nothing of this project's: run it here, carry the folder there.

    python bench/gpu_carry.py .gpu
    # there:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl
    PYTHONPATH=/tmp/site python3 bench/gpu_check.py --embedder .gpu/minilm-shape --tokenizer .gpu/smollm2-tokenizer

The folder holds (about 20 MB): the faiss-cpu wheel for CPython 3.12, MiniLM's config and tokenizer
without its weights (the check runs random weights of that shape: speed does not depend on them), and
SmolLM2's tokenizer and config. Weights stay behind: they would not fit the 64 MiB a device call carries.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
WHEELS = ["faiss-cpu==1.15.1"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args(argv)

    from indexer.embedder import resolve
    from reranker.models import resolve_model

    folder: Path = args.folder
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", args.python_version, "--implementation", "cp", *platforms,
                    "-d", str(folder / "wheels"), *WHEELS], check=True)
    minilm = Path(resolve("all-MiniLM-L6-v2"))
    shutil.copytree(minilm, folder / "minilm-shape", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "onnx", "README.md"))
    smollm = Path(resolve_model("smollm2-135m-instruct"))
    (folder / "smollm2-tokenizer").mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        if (smollm / name).exists():
            shutil.copy2(smollm / name, folder / "smollm2-tokenizer" / name)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"{folder}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
