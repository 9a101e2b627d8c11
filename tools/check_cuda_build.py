"""Check a CUDA build of fastvae._C: a cubin for every wanted architecture, no spills.

    FORCE_CUDA=1 python setup.py build_ext --inplace && python tools/check_cuda_build.py [path/to/_C.so]

Reads the extension with `cuobjdump` (the copy in Triton's wheel, else one on PATH):
`--list-elf` for the sm_XX cubins it holds, `--dump-resource-usage` for each kernel's
registers, stack and local memory. The wanted architectures are TORCH_CUDA_ARCH_LIST
(default "8.0;9.0", as setup.py). A kernel with STACK or LOCAL above zero spills registers
to local memory. Prints a table; exits 1 on a missing architecture, a build without CUDA
kernels, or any spill.
"""
import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_cuobjdump() -> str:
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            path = os.path.join(base, "backends", "nvidia", "bin", "cuobjdump")
            if os.path.exists(path):
                return path
    path = shutil.which("cuobjdump")
    if path is None:
        sys.exit("cuobjdump not found: install triton (its wheel carries one) or the CUDA toolkit")
    return path


def wanted_archs() -> list[str]:
    """TORCH_CUDA_ARCH_LIST entries as sm_XX: "8.0;9.0+PTX" -> ["sm_80", "sm_90"]."""
    archs = []
    for entry in re.split(r"[;\s]+", os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0").strip()):
        entry = entry.replace("+PTX", "")
        if entry:
            major, minor = entry.split(".")
            archs.append(f"sm_{major}{minor}")
    return archs


def demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if tool is None:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines() if out else names


def short(name: str) -> str:
    """ns::(anonymous namespace)::kernel<c10::Half, 8, true>(args) -> kernel<c10::Half, 8, true>."""
    name = name.replace("(anonymous namespace)::", "")
    depth, start = 0, 0
    for i, ch in enumerate(name):
        depth += ch == "<"
        depth -= ch == ">"
        if depth == 0 and name.startswith("::", i):
            start = i + 2
        elif depth == 0 and ch == "(":  # the argument list
            return name[start:i]
    return name[start:]


def resource_usage(cuobjdump: str, so: str):
    """[(arch, mangled kernel name, {REG: .., STACK: .., SHARED: .., LOCAL: ..})]."""
    out = subprocess.run([cuobjdump, "--dump-resource-usage", so], capture_output=True,
                         text=True, check=True).stdout
    rows, arch, function = [], None, None
    for line in out.splitlines():
        line = line.strip()
        if m := re.match(r"arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"Function (\S+):", line):
            function = m.group(1)
        elif function is not None and line.startswith("REG:"):
            usage = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            rows.append((arch, function, usage))
            function = None
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("so", nargs="?", help="the built extension (default: fastvae/_C*.so)")
    args = parser.parse_args()
    so = args.so or next(iter(sorted(glob.glob(os.path.join(ROOT, "fastvae", "_C*.so")))), None)
    if so is None or not os.path.exists(so):
        print("no built extension found: run `FORCE_CUDA=1 python setup.py build_ext --inplace`")
        return 1
    cuobjdump = find_cuobjdump()
    listing = subprocess.run([cuobjdump, "--list-elf", so], capture_output=True, text=True)
    present = sorted(set(re.findall(r"\.(sm_\w+)\.cubin", listing.stdout)))
    failures = []
    missing = [a for a in wanted_archs() if a not in present]
    if not present:
        failures.append(f"{os.path.basename(so)} holds no cubins: built without CUDA (FORCE_CUDA=1?)")
    elif missing:
        failures.append(f"missing cubins for {', '.join(missing)} (present: {', '.join(present)})")

    rows = resource_usage(cuobjdump, so) if present else []
    names = demangle([r[1] for r in rows])
    print(f"{os.path.basename(so)}: cubins {', '.join(present) or 'none'}")
    print(f"{'arch':6s} {'REG':>4s} {'STACK':>5s} {'LOCAL':>5s} {'SHARED':>6s}  kernel")
    for (arch, _, usage), name in zip(rows, names):
        spill = usage.get("STACK", 0) > 0 or usage.get("LOCAL", 0) > 0
        print(f"{arch:6s} {usage.get('REG', 0):4d} {usage.get('STACK', 0):5d} {usage.get('LOCAL', 0):5d} "
              f"{usage.get('SHARED', 0):6d}  {short(name)}{'   <- SPILLS' if spill else ''}")
        if spill:
            failures.append(f"{arch} {short(name)} spills (STACK {usage.get('STACK', 0)}, "
                            f"LOCAL {usage.get('LOCAL', 0)})")
    if present and not rows:
        failures.append("no kernels found in the cubins")
    for f in failures:
        print(f"FAIL: {f}")
    if not failures:
        print(f"OK: {len(rows)} kernels, cubins for {', '.join(wanted_archs())}, no spills")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
