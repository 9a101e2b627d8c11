// at::empty for large CPU outputs and scratch: transparent huge pages, and the blocks of
// earlier calls handed out again.
//
// A fresh 64 MiB tensor from torch's CPU allocator is mmapped in 4 KiB pages, and its first
// write takes ~16k page faults: measured here, 23 ms of a 26 ms empty_like + fill_. Memory
// aligned to 2 MiB and marked MADV_HUGEPAGE faults once per 2 MiB instead (5 ms for the
// same fill, with THP in its default "madvise" mode; where THP is off, nothing changes).
// Torch does the same for its own allocations when THP_MEM_ALLOC_ENABLE=1 is set.
//
// Fresh pages are still zeroed by the kernel (perf: clear_page was 20% of a 16M reparam_kl
// forward + backward, 3% of a DCGAN step), and a training step asks for the same large
// buffers every call: reparam_kl's z and gradients, the Winograd weight transforms. So a
// freed block is kept, up to FASTVAE_CPU_CACHE_MB in all (default 256; 0 keeps none), and
// handed out again for the same size. Blocks are uninitialized either way.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>

namespace fastvae {
namespace cpu {

// An uninitialized dense CPU tensor in `format`, in huge pages (and a kept block) when it is
// large.
at::Tensor empty_huge(at::IntArrayRef sizes, at::ScalarType dtype,
                      at::MemoryFormat format = at::MemoryFormat::Contiguous);

// Bytes of freed blocks kept for reuse now.
size_t huge_cache_bytes();

}  // namespace cpu
}  // namespace fastvae
