// The CPU instruction set a kernel file is built for.
//
// A csrc/cpu file that includes this header is compiled once per capability by setup.py,
// with -DCPU_CAPABILITY=DEFAULT (baseline x86-64: SSE2), AVX2 (+FMA, F16C) or AVX512 (F, BW,
// VL, DQ) and the matching CPU_CAPABILITY_* macro, as ATen builds its own kernels; its code
// lives in namespace fastvae::cpu::CPU_CAPABILITY, and ATen's Vectorized<T> follows the same
// macros (8 floats baseline and AVX2, 16 on AVX-512). csrc/cpu/dispatch.cpp chooses one set
// per process (cpu/kernels.h lists the entry points).
#pragma once

#if !defined(CPU_CAPABILITY)
#error "a capability source is compiled by setup.py with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512"
#endif

#include "cpu/kernels.h"

FASTVAE_CPU_KERNELS(CPU_CAPABILITY)
