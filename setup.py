"""Builds fastvae with its extension fastvae._C.

CPU sources always; CUDA sources when FORCE_CUDA=1, or when a GPU and the toolkit are
present. Architectures come from TORCH_CUDA_ARCH_LIST (default "8.0;9.0"). Install with
`pip install --no-build-isolation -e .` so the build uses the installed torch.

CPU instruction sets: csrc/cpu files that include "cpu/capability.h" hold the
hand-vectorized kernels and are compiled once per capability (baseline x86-64, AVX2,
AVX-512) into namespaces fastvae::cpu::{DEFAULT,AVX2,AVX512}; csrc/cpu/dispatch.cpp picks
one at run time from cpuid (FASTVAE_CPU_CAPABILITY overrides). Everything else is built
for baseline x86-64, so the package imports and runs on any x86-64 CPU.
"""
import glob
import os
import platform
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

# Flags per capability, as ATen's CPU_CAPABILITY builds (AVX-512: F, BW, VL, DQ).
CAPABILITY_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
}
CXX_STD = "-std=c++20"  # torch 2.14's headers need it; 2.11's take it
if platform.machine().lower() not in ("x86_64", "amd64"):
    CAPABILITY_FLAGS = {"DEFAULT": []}


def build_cuda() -> bool:
    wanted = os.environ.get("FORCE_CUDA", "0") == "1" or torch.cuda.is_available()
    if wanted and (CUDA_HOME is None or torch.version.cuda is None):
        warnings.warn("CUDA requested but no CUDA toolkit or no CUDA build of torch: "
                      "building the CPU extension only")
        return False
    return wanted


def is_capability_source(path: str) -> bool:
    with open(path) as f:
        return '#include "cpu/capability.h"' in f.read()


CPU_SOURCES = sorted(glob.glob("csrc/cpu/*.cpp"))
CAPABILITY_SOURCES = [s for s in CPU_SOURCES if is_capability_source(s)]
HEADERS = sorted(glob.glob("csrc/**/*.h", recursive=True))


def extension():
    sources = ["csrc/ops.cpp"] + [s for s in CPU_SOURCES if s not in CAPABILITY_SOURCES]
    # -fno-trapping-math lets gcc if-convert float selects such as `a > 0 ? g : g * slope`
    # (it will not speculate a multiply that could raise an FP exception flag otherwise),
    # which the epilogue loops need to vectorize; results are bit-for-bit the same.
    # One C++ standard for every object, named here: BuildExtension adds its own only where
    # none is given, and that one depends on torch's version (c++17 in 2.11, c++20 in 2.14),
    # so the capability objects compiled below once differed from the rest there: inline
    # functions of torch's headers defined two ways in one library (the suspected, not yet
    # verified, cause of the segfault formatting an argument error on the H200's torch 2.11).
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math", CXX_STD]
    if len(CAPABILITY_FLAGS) > 1:
        cxx.append("-DFASTVAE_X86_CAPABILITIES")
    kwargs = {"include_dirs": [os.path.abspath("csrc")], "extra_link_args": ["-fopenmp"],
              "depends": CAPABILITY_SOURCES + HEADERS}
    if build_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "--use_fast_math", "-DWITH_CUDA", CXX_STD]
        return CUDAExtension("fastvae._C", sources, extra_compile_args={"cxx": cxx + ["-DWITH_CUDA"], "nvcc": nvcc},
                             **kwargs)
    return CppExtension("fastvae._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


class BuildWithCapabilities(BuildExtension):
    """BuildExtension, plus each capability source compiled once per CPU_CAPABILITY.

    The objects are linked after the baseline ones, lowest capability first: an inline
    function from a header that several of them instantiate (ATen's, libstdc++'s) keeps the
    first copy the linker meets, so no baseline caller can land in AVX2 or AVX-512 code.
    """

    def build_extension(self, ext):
        cxx_args = ext.extra_compile_args
        cxx_args = cxx_args.get("cxx", []) if isinstance(cxx_args, dict) else cxx_args
        base = [os.environ.get("CXX", "c++")] + self.compiler.compiler_so[1:]
        base += [f"-I{d}" for d in ext.include_dirs] + cxx_args
        jobs = []
        for cap, flags in CAPABILITY_FLAGS.items():
            for src in CAPABILITY_SOURCES:
                obj = os.path.join(self.build_temp, "capability", cap,
                                   os.path.basename(src)[:-4] + ".o")
                cmd = base + [f"-DCPU_CAPABILITY={cap}", f"-DCPU_CAPABILITY_{cap}"] + flags
                jobs.append((cmd + ["-c", src, "-o", obj], src, obj))
        ext.extra_objects = [obj for _, _, obj in jobs]
        # (BuildExtension sets self.force whenever it uses ninja, which tracks its own
        # sources: these are rebuilt when their source, a header or the command changed)
        stale = [(cmd, src, obj) for cmd, src, obj in jobs if self._stale(cmd, src, obj)]
        stale.sort(key=lambda job: -os.path.getsize(job[1]))  # the long poles first
        for cmd, _, obj in stale:
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            print(" ".join(cmd))
        # They compile while BuildExtension compiles the rest (ninja); the link waits for
        # them. One after the other, a GPU machine's build took ~220 s, most of it these.
        pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1))
        running = [pool.submit(subprocess.run, cmd) for cmd, _, _ in stale]

        def finish():  # once: every capability object built, or the build fails
            while running:
                proc = running.pop(0).result()
                if proc.returncode != 0:
                    raise RuntimeError(f"compiling {' '.join(proc.args)} failed")
            for cmd, _, obj in stale:
                with open(obj + ".cmd", "w") as f:
                    f.write(" ".join(cmd))
            stale.clear()

        link = self.compiler.link_shared_object

        def link_when_built(*args, **kwargs):
            finish()
            return link(*args, **kwargs)
        self.compiler.link_shared_object = link_when_built
        try:
            super().build_extension(ext)
            finish()
        finally:
            self.compiler.link_shared_object = link
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _stale(cmd: list, src: str, obj: str) -> bool:
        if not os.path.exists(obj) or not os.path.exists(obj + ".cmd"):
            return True
        with open(obj + ".cmd") as f:
            if f.read() != " ".join(cmd):
                return True
        built = os.path.getmtime(obj)
        return any(os.path.getmtime(p) > built for p in [src] + HEADERS)


setup(
    name="fastvae",
    version="0.1.0",
    description="Fused reparameterization/KL and deconvolution-block kernels for VAEs, "
                "and a style-mixing VAE built on them",
    packages=["fastvae", "fastvae.kernels"],
    package_dir={"fastvae.kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy", "pillow", "safetensors", "tqdm"],
    extras_require={
        "triton": ["triton"],
        "test": ["pytest", "pytest-benchmark", "scipy", "ninja"],
        "demo": ["scikit-image"],
    },
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildWithCapabilities},
    entry_points={"console_scripts": ["fastvae = fastvae.cli:main"]},
)
