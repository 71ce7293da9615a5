// What at::parallel_for does when called from this library's CPU kernels.
#pragma once

#include <cstdint>

namespace mixshare_ops::cpu {

// Runs at::parallel_for over `work_items` items with grain 1, as the kernels
// do, and returns how many distinct threads took part. 1 means the library
// was compiled without OpenMP (the header-only parallel_for then runs its
// loop serially) or that torch is set to one thread.
int64_t parallel_for_threads(int64_t work_items);

}  // namespace mixshare_ops::cpu
