// at::empty for large CPU outputs, backed by transparent huge pages.
//
// A fresh 64 MiB tensor from torch's CPU allocator is mmapped in 4 KiB pages, and its first
// write takes ~16k page faults: measured here, 23 ms of a 26 ms empty_like + fill_. Memory
// aligned to 2 MiB and marked MADV_HUGEPAGE faults once per 2 MiB instead (5 ms for the
// same fill, with THP in its default "madvise" mode; where THP is off, nothing changes).
// Torch does the same for its own allocations when THP_MEM_ALLOC_ENABLE=1 is set.
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <c10/core/CPUAllocator.h>

#include <sys/mman.h>

#include <cstdlib>

namespace fastvae {
namespace cpu {

class HugePageAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kHugePage = size_t{2} << 20;
  static constexpr size_t kMinBytes = size_t{4} << 20;  // smaller outputs: torch's allocator

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, bytes);
    TORCH_CHECK(p != nullptr, "fastvae: out of memory allocating ", bytes, " bytes");
    madvise(p, bytes, MADV_HUGEPAGE);  // a hint: failure leaves ordinary pages
    return {p, p, &std::free, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

// An uninitialized contiguous CPU tensor, in huge pages when it is large.
inline at::Tensor empty_huge(at::IntArrayRef sizes, at::ScalarType dtype) {
  static HugePageAllocator allocator;
  return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   dtype, c10::nullopt);
}

}  // namespace cpu
}  // namespace fastvae
