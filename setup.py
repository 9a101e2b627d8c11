"""Builds fastvae with its extension fastvae._C.

CPU sources always; CUDA sources when FORCE_CUDA=1, or when a GPU and the toolkit are
present. Architectures come from TORCH_CUDA_ARCH_LIST (default "8.0;9.0"). Install with
`pip install --no-build-isolation -e .` so the build uses the installed torch.
"""
import glob
import os
import warnings

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def build_cuda() -> bool:
    wanted = os.environ.get("FORCE_CUDA", "0") == "1" or torch.cuda.is_available()
    if wanted and (CUDA_HOME is None or torch.version.cuda is None):
        warnings.warn("CUDA requested but no CUDA toolkit or no CUDA build of torch: "
                      "building the CPU extension only")
        return False
    return wanted


def extension():
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -fno-trapping-math lets gcc if-convert float selects such as `a > 0 ? g : g * slope`
    # (it will not speculate a multiply that could raise an FP exception flag otherwise),
    # which the epilogue loops need to vectorize; results are bit-for-bit the same.
    cxx = ["-O3", "-fopenmp", "-mavx2", "-mfma", "-mf16c", "-fno-trapping-math",
           "-DCPU_CAPABILITY_AVX2"]
    kwargs = {"include_dirs": [os.path.abspath("csrc")], "extra_link_args": ["-fopenmp"]}
    if build_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "--use_fast_math", "-DWITH_CUDA"]
        return CUDAExtension("fastvae._C", sources, extra_compile_args={"cxx": cxx + ["-DWITH_CUDA"], "nvcc": nvcc},
                             **kwargs)
    return CppExtension("fastvae._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


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
    cmdclass={"build_ext": BuildExtension},
    entry_points={"console_scripts": ["fastvae = fastvae.cli:main"]},
)
