"""Compile check: every cuda/*.cu through nvcc/ptxas for every target arch, with a resource report.

Uses the very options the runtime gives SourceModule (cuda_backend.NVCC_OPTIONS, include dir cuda/),
plus `-Xptxas -v,-warn-spills,-Werror`. A kernel fails on a spill, a stack frame, or more registers
than the budget its file declares in the header comment:

    // ptxas-budget: registers=64 threads=256                     (every kernel of the file)
    // ptxas-budget[attention_decode_combine_f32]: registers=40 threads=32   (one kernel)

`threads` is the block size the launcher uses; with registers and shared memory it gives the occupancy
estimate of the table. Run as a script to print the table: `python -m tests.kernels.ptxas`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inference.model.backends.cuda_backend import CUDA_DIR, NVCC_OPTIONS, TARGET_ARCHS

# per SM: registers, max threads, max blocks, shared memory per SM usable by blocks (bytes)
SM_LIMITS = {
    "sm_80": (65536, 2048, 32, 164 * 1024),
    "sm_86": (65536, 1536, 16, 100 * 1024),
    "sm_89": (65536, 1536, 24, 100 * 1024),
    "sm_90": (65536, 2048, 32, 228 * 1024),
}
_BUDGET = re.compile(r"//\s*ptxas-budget(?:\[(\w+)\])?:\s*registers=(\d+)\s+threads=(\d+)")


@dataclass
class KernelResources:
    file: str
    kernel: str
    arch: str
    registers: int = 0
    smem: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    budget_registers: int | None = None
    threads: int | None = None

    def problems(self) -> list[str]:
        out = []
        if self.spill_stores or self.spill_loads:
            out.append(f"spills {self.spill_stores}/{self.spill_loads} bytes")
        if self.stack:
            out.append(f"{self.stack}-byte stack frame")
        if self.budget_registers is None:
            out.append("no ptxas-budget declared")
        elif self.registers > self.budget_registers:
            out.append(f"{self.registers} registers > budget {self.budget_registers}")
        return out

    def occupancy(self, dynamic_smem: int = 0) -> float:
        """Fraction of the SM's warps resident (static smem only unless dynamic_smem is given)."""
        regs_sm, threads_sm, blocks_sm, smem_sm = SM_LIMITS[self.arch]
        threads = self.threads or 128
        warps = -(-threads // 32)
        regs_per_warp = -(-max(self.registers, 1) * 32 // 256) * 256
        by_regs = regs_sm // (regs_per_warp * warps)
        by_threads = threads_sm // (warps * 32)
        smem = self.smem + dynamic_smem
        by_smem = smem_sm // (smem + 1024) if smem else blocks_sm
        blocks = min(by_regs, by_threads, blocks_sm, by_smem)
        return blocks * warps * 32 / threads_sm


def nvcc_path() -> str | None:
    return shutil.which("nvcc")


def budgets(source: str) -> tuple[tuple[int, int] | None, dict[str, tuple[int, int]]]:
    default, per_kernel = None, {}
    for name, regs, threads in _BUDGET.findall(source):
        if name:
            per_kernel[name] = (int(regs), int(threads))
        else:
            default = (int(regs), int(threads))
    return default, per_kernel


def compile_file(cu: Path, arch: str) -> tuple[list[KernelResources], str]:
    """ptxas resources of every kernel of `cu` on `arch`, and nvcc's error text ('' when it compiled)."""
    cmd = ["nvcc", "-cubin", f"-arch={arch}", "-I", str(CUDA_DIR), *NVCC_OPTIONS]
    cmd += ["-Xptxas", "-v,-warn-spills,-Werror", "-o", "/dev/null", str(cu)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    text = res.stdout + res.stderr
    default, per_kernel = budgets(cu.read_text())
    kernels: dict[str, KernelResources] = {}
    current = None
    for line in text.splitlines():
        if m := re.search(r"Function properties for (\w+)", line):
            current = kernels.setdefault(m[1], KernelResources(cu.name, m[1], arch))
        elif m := re.search(r"Compiling entry function '(\w+)'", line):
            current = kernels.setdefault(m[1], KernelResources(cu.name, m[1], arch))
        elif current and (
            m := re.search(
                r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line
            )
        ):
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif current and (m := re.search(r"Used (\d+) registers", line)):
            current.registers = int(m[1])
            if s := re.search(r"(\d+) bytes smem", line):
                current.smem = int(s[1])
    for k in kernels.values():
        k.budget_registers, k.threads = per_kernel.get(k.kernel, default) or (None, None)
    error = "" if res.returncode == 0 else text[-4000:]
    return list(kernels.values()), error


def check_all(files: list[Path] | None = None, archs=TARGET_ARCHS, jobs: int = 4):
    """Compile every (file, arch); returns (resources, failures) with failures as readable lines."""
    files = files or sorted(CUDA_DIR.glob("*.cu"))
    work = [(f, a) for f in files for a in archs]
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda fa: compile_file(*fa), work))
    resources, failures = [], []
    for (f, arch), (kernels, error) in zip(work, results, strict=True):
        if error:
            failures.append(f"{f.name} [{arch}]: nvcc/ptxas failed:\n{error}")
        if not kernels and not error:
            failures.append(f"{f.name} [{arch}]: no kernels reported by ptxas")
        for k in kernels:
            failures += [f"{f.name}:{k.kernel} [{arch}]: {p}" for p in k.problems()]
        resources += kernels
    return resources, failures


def table(resources: list[KernelResources]) -> str:
    """One line per kernel: registers per arch, static smem, budget, block size, occupancy on sm_80/sm_90."""
    by_kernel: dict[tuple[str, str], dict[str, KernelResources]] = {}
    for r in resources:
        by_kernel.setdefault((r.file, r.kernel), {})[r.arch] = r
    archs = sorted({r.arch for r in resources})
    head = f"{'file':<22} {'kernel':<30} " + " ".join(f"{a:>6}" for a in archs)
    head += f" {'budget':>6} {'smem':>6} {'block':>5} {'occ80':>5} {'occ90':>5}"
    lines = [head, "-" * len(head)]
    for (file, kernel), per_arch in sorted(by_kernel.items()):
        any_r = next(iter(per_arch.values()))
        regs = " ".join(f"{per_arch[a].registers if a in per_arch else '-':>6}" for a in archs)
        occ = [
            f"{per_arch[a].occupancy():>5.0%}" if a in per_arch else f"{'-':>5}" for a in ("sm_80", "sm_90")
        ]
        lines.append(
            f"{file:<22} {kernel:<30} {regs} {any_r.budget_registers or '-':>6} {any_r.smem:>6} "
            f"{any_r.threads or '-':>5} {occ[0]} {occ[1]}"
        )
    return "\n".join(lines)


def main() -> int:
    if not nvcc_path():
        print("nvcc not found on PATH: compile check skipped")
        return 0
    resources, failures = check_all()
    print(table(resources))
    print(f"\n{len(resources)} kernel compilations, {len(failures)} problems")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
