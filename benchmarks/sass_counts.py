"""MLA decode's split kernel compiled for sm_90 without a GPU: shared memory, registers and
instruction counts of the SASS, per launch (block_n, warps, stages, head groups).

Needs only the Triton wheel (its bundled ptxas, cuobjdump and nvdisasm); no device is touched.

    python3 benchmarks/sass_counts.py [--launch 64,8,2,1 --launch 64,8,2,2 ...] [--python DIR]

`--python` compiles another checkout's kernel (its `python/` directory), e.g. one from before a
change: kernels without head groups take head groups 1 only.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

HEADS, D_LAT, D_ROPE, PAGE = 20, 512, 64, 16
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
INTS = ["stride_qb", "stride_qh", "stride_qrb", "stride_qrh", "stride_kv", "stride_pt",
        "stride_pob", "stride_pos", "stride_poh", "stride_plb", "stride_pls", "num_heads",
        "heads_per_group", "num_splits"]  # fmt: skip
ALIGNED = ["q_ptr", "qr_ptr", "kv_ptr", "part_out_ptr", "part_lse_ptr", "stride_qb", "stride_qh",
           "stride_qrb", "stride_kv", "stride_pob", "stride_pos", "stride_poh"]  # fmt: skip


def compile_split(
    mla_decode: Any, block_n: int, warps: int, stages: int, groups: int
) -> tuple[bytes, int]:
    """The split kernel's cubin for sm_90 at this launch, and its shared memory in bytes."""
    kernel = mla_decode._mla_decode_split_kernel
    names = kernel.arg_names
    sig = {"q_ptr": "*bf16", "qr_ptr": "*bf16", "kv_ptr": "*bf16", "page_table_ptr": "*i32",
           "seq_lens_ptr": "*i32", "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32",
           "scale_log2": "fp32", **{a: "i32" for a in INTS if a in names}}  # fmt: skip
    block_h = max(16, triton.next_power_of_2(triton.cdiv(HEADS, groups)))
    consts = dict(PAGE_SIZE=PAGE, D_LAT=D_LAT, D_ROPE=D_ROPE, BLOCK_H=block_h, BLOCK_N=block_n,
                  RESCALE_SLACK=mla_decode.RESCALE_SLACK, USE_PDL=True, HEAD_GROUPS=groups,
                  KV_LINES=9, KV_BLOCK_L=16, KV_LINE_ELEMS=64)  # fmt: skip
    if "HEAD_GROUPS" not in names:
        if groups != 1:
            raise ValueError("this kernel has no head groups")
        del consts["HEAD_GROUPS"]
    sig.update(dict.fromkeys(consts, "constexpr"))
    src = ASTSource(
        fn=kernel,
        signature=sig,
        constexprs={(names.index(c),): v for c, v in consts.items()},
        attrs={(names.index(a),): [["tt.divisibility", 16]] for a in ALIGNED},
    )
    options = {"num_warps": warps, "num_stages": stages}
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    return compiled.asm["cubin"], compiled.metadata.shared


def counts(cubin: bytes) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([BIN / "nvdisasm", "-c", f.name], capture_output=True, text=True)
        res = subprocess.run([BIN / "cuobjdump", "-res-usage", f.name], capture_output=True,
                             text=True)  # fmt: skip
    lines = [ln for ln in sass.stdout.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", ln)]
    regs = re.search(r"REG:(\d+)", res.stdout)
    out = {"registers": int(regs.group(1)) if regs else -1, "instructions": len(lines)}
    for op in ("HMMA", "HGMMA", "LDSM", "LDG", "STG", "LDL", "STL"):
        out[op] = sum(1 for ln in lines if re.search(rf"\b{op}\b", ln))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--launch", action="append", default=None,
                        help="block_n,warps,stages,head_groups (repeatable)")  # fmt: skip
    parser.add_argument("--python", type=Path, default=Path(__file__).resolve().parents[1] / "python",
                        help="the python/ directory whose kernel to compile")  # fmt: skip
    args = parser.parse_args()
    sys.path.insert(0, str(args.python))
    mla_decode = importlib.import_module("glm47.kernels.mla_decode")
    for launch in args.launch or ["64,8,2,1", "64,8,2,2", "32,4,3,1"]:
        block_n, warps, stages, groups = (int(v) for v in launch.split(","))
        cubin, shared = compile_split(mla_decode, block_n, warps, stages, groups)
        row = {"shared bytes": shared, **counts(cubin)}
        print(f"({block_n}, {warps}, {stages}) head groups {groups}: "
              + ", ".join(f"{k} {v}" for k, v in row.items()))  # fmt: skip


if __name__ == "__main__":
    main()
