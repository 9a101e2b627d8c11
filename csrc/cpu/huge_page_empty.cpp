// empty_huge (huge_page_empty.h): a 2 MiB-aligned, MADV_HUGEPAGE allocator for large CPU
// tensors with a bounded cache of freed blocks. Built once, for baseline x86-64.
#include "cpu/huge_page_empty.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <sys/mman.h>

#include <cstdlib>
#include <deque>
#include <mutex>

namespace fastvae {
namespace cpu {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kMinBytes = size_t{4} << 20;  // smaller tensors: torch's allocator
constexpr size_t kDefaultCacheMiB = 256;

size_t cache_limit() {  // read at every free, so a process can change it
  const char* env = std::getenv("FASTVAE_CPU_CACHE_MB");
  if (env == nullptr || *env == '\0') return kDefaultCacheMiB << 20;
  char* end = nullptr;
  const unsigned long long mib = std::strtoull(env, &end, 10);
  return *end == '\0' ? static_cast<size_t>(mib) << 20 : kDefaultCacheMiB << 20;
}

struct Block {
  void* p;
  size_t bytes;
};

// Freed blocks, oldest first. A block goes back out only for its own (2 MiB-rounded) size.
class BlockCache {
 public:
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
      if (it->bytes == bytes) {
        void* p = it->p;
        held_ -= bytes;
        blocks_.erase(std::next(it).base());
        return p;
      }
    }
    return nullptr;
  }

  void give(Block b) {
    const size_t limit = cache_limit();
    std::lock_guard<std::mutex> lock(mutex_);
    // The oldest go: to make room for b, or, for a b larger than the whole limit (not
    // kept), only as far as a lowered limit asks.
    const size_t keep = b.bytes <= limit ? limit - b.bytes : limit;
    while (!blocks_.empty() && held_ > keep) {
      std::free(blocks_.front().p);
      held_ -= blocks_.front().bytes;
      blocks_.pop_front();
    }
    if (b.bytes > limit) {
      std::free(b.p);
      return;
    }
    blocks_.push_back(b);
    held_ += b.bytes;
  }

  size_t held() {
    std::lock_guard<std::mutex> lock(mutex_);
    return held_;
  }

 private:
  std::mutex mutex_;
  std::deque<Block> blocks_;
  size_t held_ = 0;
};

BlockCache& cache() {
  static BlockCache* c = new BlockCache();  // never destroyed: tensors may outlive statics
  return *c;
}

void release(void* ctx) {
  Block* b = static_cast<Block*>(ctx);
  cache().give(*b);
  delete b;
}

class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* p = cache().take(bytes);
    if (p == nullptr) {
      p = std::aligned_alloc(kHugePage, bytes);
      TORCH_CHECK(p != nullptr, "fastvae: out of memory allocating ", bytes, " bytes");
      madvise(p, bytes, MADV_HUGEPAGE);  // a hint: failure leaves ordinary pages
    }
    return {p, new Block{p, bytes}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

}  // namespace

at::Tensor empty_huge(at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat format) {
  static HugePageAllocator allocator;
  return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   dtype, format);
}

size_t huge_cache_bytes() { return cache().held(); }

}  // namespace cpu
}  // namespace fastvae
