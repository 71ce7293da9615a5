#include "parallel_info.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>

namespace mixshare_ops::cpu {

int64_t parallel_for_threads(int64_t work_items) {
  TORCH_CHECK(work_items > 0, "parallel_for_threads: work_items must be positive, got ", work_items);
  TORCH_CHECK(at::get_num_threads() <= 64, "parallel_for_threads: counts at most 64 threads, torch uses ",
              at::get_num_threads());
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, work_items, 1, [&](int64_t, int64_t) {
    const int thread = at::get_thread_num();
    if (thread >= 0 && thread < 64) seen.fetch_or(uint64_t{1} << thread);
  });
  int64_t count = 0;
  for (uint64_t bits = seen.load(); bits != 0; bits &= bits - 1) ++count;
  return count;
}

}  // namespace mixshare_ops::cpu
