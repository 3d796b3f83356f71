#include <xxhash.h>
#if defined(__x86_64__)
// The entry points that pick SSE2, AVX2 or AVX-512 by the CPU at run time (libxxhash
// exports them on x86_64); without the macros that would rename the plain ones.
#define XXH_DISPATCH_DISABLE_REPLACE
#include <xxh_x86dispatch.h>
#endif
