// CUDA-on-CPU emulation header: lets g++ compile cuda/*.cu as host C++20 so kernels run in CI.
//
// Model (see /work/shared/KERNELS.md):
//   - blocks run one after another on the calling OS thread; every CUDA thread of a block is a fiber
//     (x86-64: a 14-instruction stack switch; elsewhere: ucontext). Fibers switch only at barriers and
//     warp intrinsics, so a launch is deterministic and a deadlock is exact: no fiber can run.
//   - threadIdx/blockIdx/blockDim/gridDim are thread_local, rewritten on every switch.
//   - __shared__ variables are statics in the ELF section "cuda_emu_shared", poisoned with 0xFF (a NaN
//     for floats) before every block, as is the dynamic shared memory of CUDA_DYN_SMEM.
//   - __syncthreads() carries a std::source_location: two different barriers reached together, a thread
//     returning while others wait, or a barrier that can never complete is a launch error.
//   - _sync warp intrinsics rendezvous per warp: the last lane of the mask to arrive computes every
//     lane's result; a mask naming a missing lane, or reading a lane outside the mask, is an error.
//   - flags: CUDA_EMU_RANDOM_THREADS shuffles the fiber order of every scheduler pass,
//     CUDA_EMU_RANDOM_BLOCKS shuffles the block order (seeded, so a failure replays).
//   - per kernel, CUDA_EMU_EXPORT(name) defines the C ABI the Python loader calls:
//     cuda_emu_launch_<name>(params, grid, block, shared, flags, seed, err, errlen) -> 0 | -1
//     cuda_emu_signature_<name>(kinds, sizes, cap) -> parameter count; kinds: p pointer, r pointer to
//     const, i signed integer, u unsigned integer, f floating point, s other.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emu.hpp is for host compilers only"
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <source_location>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// ---------------------------------------------------------------------------------------------------
// Qualifiers and built-in types
// ---------------------------------------------------------------------------------------------------
#ifdef CUDA_EMU_SCAN
#define __global__ CUDA_EMU_KERNEL_MARK  // the loader's preprocessor pass finds kernels by this token
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("cuda_emu_shared"), aligned(16)))
#define CUDA_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(::cuda_emu::dynamic_shared())

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------------
// Half precision: _Float16 rounds to nearest even, like NumPy float16 and __float2half
// ---------------------------------------------------------------------------------------------------
using __half = _Float16;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half(float f) { return static_cast<__half>(f); }
inline __half __float2half_rn(float f) { return static_cast<__half>(f); }
inline __half __ushort_as_half(unsigned short u) { return std::bit_cast<__half>(u); }
inline unsigned short __half_as_ushort(__half h) { return std::bit_cast<unsigned short>(h); }

// ---------------------------------------------------------------------------------------------------
// Math and bit intrinsics (round-to-nearest versions are the plain operations on the host)
// ---------------------------------------------------------------------------------------------------
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline void sincosf(float x, float* s, float* c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
inline void __sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
// CUDA's integer min/max overloads in the global namespace
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __ffs(unsigned x) { return x ? std::countr_zero(x) + 1 : 0; }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// Atomics: one OS thread runs all fibers, but std::atomic_ref keeps the code honest under a threaded mode
template <class T>
inline T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
inline int atomicMax(int* p, int v) {
  std::atomic_ref<int> r(*p);
  int old = r.load();
  while (old < v && !r.compare_exchange_weak(old, v)) {
  }
  return old;
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
  std::atomic_ref<unsigned> r(*p);
  unsigned old = r.load();
  while (old < v && !r.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <class T>
inline T atomicCAS(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
  return expected;
}
template <class T>
inline T atomicExch(T* p, T v) {
  return std::atomic_ref<T>(*p).exchange(v);
}

// ---------------------------------------------------------------------------------------------------
// Fibers and the block scheduler
// ---------------------------------------------------------------------------------------------------
#if defined(__x86_64__)
// cuda_emu_switch(&save_sp, next_sp): pushes the callee-saved registers, swaps stacks, pops, returns
asm(R"(
  .text
  .p2align 4
  .hidden cuda_emu_switch
  .globl cuda_emu_switch
  .type cuda_emu_switch,@function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch, .-cuda_emu_switch
)");
extern "C" void cuda_emu_switch(void** save_sp, void* next_sp);
#endif

extern "C" {
extern char __start_cuda_emu_shared[] __attribute__((weak, visibility("hidden")));
extern char __stop_cuda_emu_shared[] __attribute__((weak, visibility("hidden")));
}

namespace cuda_emu {

enum : unsigned { RANDOM_THREADS = 1u, RANDOM_BLOCKS = 2u };
enum class State : unsigned char { Ready, AtBarrier, AtWarp, Done };
enum class WarpOp : unsigned char { None, Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, SyncWarp };

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kMaxStaticPlusDynamicShared = 48 * 1024;  // the default limit without an opt-in

struct LaunchFailure {};  // unwinds nothing: a failing fiber switches straight back to the scheduler

struct Fiber {
  void* sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t ctx;
#endif
  char* stack = nullptr;
  uint3 tid{};
  unsigned linear = 0;
  State state = State::Ready;
  std::source_location where;  // barrier or warp op it waits at
  uint64_t warp_result = 0;
};

struct Warp {
  WarpOp op = WarpOp::None;
  unsigned mask = 0, arrived = 0;
  int width = 32;
  std::source_location where;
  uint64_t value[32] = {};
  int arg[32] = {};
};

struct Launch {
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  dim3 grid, block;
  unsigned nthreads = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Fiber* current = nullptr;
  void* sched_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t sched_ctx;
#endif
  unsigned char* dyn = nullptr;
  size_t dyn_bytes = 0;
  std::string error;
};

inline thread_local Launch* g_launch = nullptr;

struct StackPool {  // stacks survive launches; a PROT_NONE page under each turns overflow into SIGSEGV
  std::vector<char*> stacks;
  char* get(size_t i) {
    while (stacks.size() <= i) {
      size_t page = 4096;
      void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      mprotect(p, page, PROT_NONE);
      stacks.push_back(static_cast<char*>(p) + page);
    }
    return stacks[i];
  }
};
inline thread_local StackPool g_stacks;

inline std::string where_str(const std::source_location& w) {
  const char* f = w.file_name();
  const char* slash = std::strrchr(f, '/');
  return std::string(slash ? slash + 1 : f) + ":" + std::to_string(w.line());
}

inline std::string thread_str(const Fiber& f) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z,
                f.tid.x, f.tid.y, f.tid.z);
  return buf;
}

inline void switch_to_scheduler(Fiber* f) {
  Launch* L = g_launch;
#if defined(__x86_64__)
  cuda_emu_switch(&f->sp, L->sched_sp);
#else
  swapcontext(&f->ctx, &L->sched_ctx);
#endif
  threadIdx = L->current->tid;  // we are back on this fiber
}

// A kernel-side error: record it, then never come back (the scheduler abandons the launch)
[[noreturn]] inline void fail(const std::string& msg) {
  Launch* L = g_launch;
  if (L->error.empty()) L->error = thread_str(*L->current) + ": " + msg;
  L->current->state = State::Done;
  switch_to_scheduler(L->current);
  __builtin_unreachable();
}

inline void fiber_main() {
  Launch* L = g_launch;
  L->body(L->ctx);
  Fiber* f = L->current;
  f->state = State::Done;
  switch_to_scheduler(f);
  __builtin_unreachable();
}

#if !defined(__x86_64__)
inline void fiber_main_ucontext() { fiber_main(); }
#endif

inline void init_fiber(Fiber& f, char* stack) {
  f.stack = stack;
  f.state = State::Ready;
#if defined(__x86_64__)
  // after the 6 pops and the ret, rsp = top - 8: the alignment a function sees right after a call
  auto top = reinterpret_cast<uintptr_t>(stack + kStackBytes) & ~uintptr_t(15);
  auto* sp = reinterpret_cast<void**>(top - 64);
  for (int i = 0; i < 6; ++i) sp[i] = nullptr;
  sp[6] = reinterpret_cast<void*>(&fiber_main);
  sp[7] = nullptr;
  f.sp = sp;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_main_ucontext, 0);
#endif
}

inline void resume(Launch* L, Fiber& f) {
  L->current = &f;
  threadIdx = f.tid;
#if defined(__x86_64__)
  cuda_emu_switch(&L->sched_sp, f.sp);
#else
  swapcontext(&L->sched_ctx, &f.ctx);
#endif
}

inline void poison_shared(Launch* L) {
  if (__start_cuda_emu_shared && __stop_cuda_emu_shared)
    std::memset(__start_cuda_emu_shared, 0xFF, size_t(__stop_cuda_emu_shared - __start_cuda_emu_shared));
  if (L->dyn_bytes) std::memset(L->dyn, 0xFF, L->dyn_bytes);
}

// All live fibers are blocked: release a barrier everybody reached, or explain the deadlock.
inline bool release_or_explain(Launch* L) {
  Fiber* first_bar = nullptr;
  Fiber* done = nullptr;
  for (auto& f : L->fibers) {
    if (f.state == State::Done) {
      if (!done) done = &f;
      continue;
    }
    if (f.state == State::AtWarp) {
      Warp& w = L->warps[f.linear / 32];
      unsigned missing = w.mask & ~w.arrived;
      char buf[160];
      std::snprintf(buf, sizeof buf, "warp %u deadlocks in a _sync intrinsic at %s: lanes 0x%08x never arrive",
                    f.linear / 32, where_str(w.where).c_str(), missing);
      L->error = thread_str(f) + ": " + buf;
      return false;
    }
    if (!first_bar) {
      first_bar = &f;
    } else if (f.where.line() != first_bar->where.line() || f.where.column() != first_bar->where.column() ||
               std::strcmp(f.where.file_name(), first_bar->where.file_name()) != 0) {
      L->error = "divergent __syncthreads: " + thread_str(*first_bar) + " waits at " +
                 where_str(first_bar->where) + " while " + thread_str(f) + " waits at " + where_str(f.where);
      return false;
    }
  }
  if (!first_bar) return true;  // everyone finished
  if (done) {
    L->error = thread_str(*done) + " returned while " + thread_str(*first_bar) + " waits at __syncthreads at " +
               where_str(first_bar->where);
    return false;
  }
  for (auto& f : L->fibers) f.state = State::Ready;
  return true;
}

inline bool run_block(Launch* L, std::mt19937_64& rng, bool shuffle) {
  poison_shared(L);
  std::vector<unsigned> order(L->nthreads);
  for (unsigned i = 0; i < L->nthreads; ++i) {
    Fiber& f = L->fibers[i];
    f.linear = i;
    f.tid = {i % L->block.x, (i / L->block.x) % L->block.y, i / (L->block.x * L->block.y)};
    init_fiber(f, g_stacks.get(i));
    order[i] = i;
  }
  for (auto& w : L->warps) w = Warp{};
  for (;;) {
    if (shuffle) std::shuffle(order.begin(), order.end(), rng);
    bool ran = false, live = false;
    for (unsigned i : order) {
      Fiber& f = L->fibers[i];
      if (f.state != State::Ready) continue;
      resume(L, f);
      ran = true;
      if (!L->error.empty()) return false;
    }
    for (auto& f : L->fibers) live |= f.state != State::Done;
    if (!live) return true;
    bool any_ready = false;
    for (auto& f : L->fibers) any_ready |= f.state == State::Ready;
    if (any_ready) continue;
    if (!release_or_explain(L)) return false;
    (void)ran;
  }
}

inline int launch(Launch& L, const unsigned* grid, const unsigned* block, size_t shared, unsigned flags,
                  unsigned long long seed, char* err, size_t errlen) {
  auto report = [&](const std::string& msg) {
    std::snprintf(err, errlen, "%s", msg.c_str());
    return -1;
  };
  L.grid = dim3(grid[0], grid[1], grid[2]);
  L.block = dim3(block[0], block[1], block[2]);
  L.nthreads = block[0] * block[1] * block[2];
  if (!L.nthreads || L.nthreads > 1024 || block[2] > 64)
    return report("invalid block (" + std::to_string(block[0]) + "," + std::to_string(block[1]) + "," +
                  std::to_string(block[2]) + "): at most 1024 threads and z <= 64");
  if (!grid[0] || !grid[1] || !grid[2] || grid[1] > 65535 || grid[2] > 65535)
    return report("invalid grid: every dimension >= 1, y and z <= 65535");
  size_t static_smem = __start_cuda_emu_shared ? size_t(__stop_cuda_emu_shared - __start_cuda_emu_shared) : 0;
  if (static_smem + shared > kMaxStaticPlusDynamicShared)
    return report("shared memory " + std::to_string(static_smem) + " static + " + std::to_string(shared) +
                  " dynamic bytes exceeds the 48 KiB default limit");
  std::vector<unsigned char> dyn(shared + 16);
  L.dyn = dyn.data() + (16 - reinterpret_cast<uintptr_t>(dyn.data()) % 16) % 16;
  L.dyn_bytes = shared;
  L.fibers.assign(L.nthreads, Fiber{});
  L.warps.assign((L.nthreads + 31) / 32, Warp{});
  for (unsigned i = 0; i < L.nthreads; ++i)
    if (!g_stacks.get(i)) return report("cannot allocate fiber stacks");

  std::vector<uint3> blocks;
  blocks.reserve(size_t(grid[0]) * grid[1] * grid[2]);
  for (unsigned z = 0; z < grid[2]; ++z)
    for (unsigned y = 0; y < grid[1]; ++y)
      for (unsigned x = 0; x < grid[0]; ++x) blocks.push_back({x, y, z});
  std::mt19937_64 rng(seed);
  if (flags & RANDOM_BLOCKS) std::shuffle(blocks.begin(), blocks.end(), rng);

  Launch* saved = g_launch;
  g_launch = &L;
  blockDim = L.block;
  gridDim = L.grid;
  bool ok = true;
  for (const uint3& b : blocks) {
    blockIdx = b;
    if (!(ok = run_block(&L, rng, flags & RANDOM_THREADS))) break;
  }
  g_launch = saved;
  if (!ok) return report(L.error);
  return 0;
}

inline void* dynamic_shared() { return g_launch->dyn; }

inline Fiber& self() { return *g_launch->current; }

// __syncthreads: wait until every thread of the block reaches this very barrier
inline void syncthreads(std::source_location where) {
  Fiber& f = self();
  f.where = where;
  f.state = State::AtBarrier;
  switch_to_scheduler(&f);
}

// Warp rendezvous: lane arrives with (op, mask, value, arg); the last lane of the mask computes all results
template <class T>
inline T warp_op(WarpOp op, unsigned mask, T value, int arg, int width, std::source_location where) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  Launch* L = g_launch;
  Fiber& f = self();
  unsigned lane = f.linear % 32, wid = f.linear / 32;
  unsigned present = (wid + 1) * 32 <= L->nthreads ? 0xffffffffu : ((1u << (L->nthreads % 32)) - 1u);
  if (!(mask >> lane & 1u)) fail("calls a _sync intrinsic at " + where_str(where) + " with a mask without its own lane");
  if (mask & ~present)
    fail("_sync mask " + std::to_string(mask) + " names lanes that do not exist in this block of " +
         std::to_string(L->nthreads) + " threads (" + where_str(where) + ")");
  if (width <= 0 || width > 32 || (width & (width - 1)))
    fail("shuffle width must be a power of two <= 32 at " + where_str(where));
  Warp& w = L->warps[wid];
  if (w.arrived == 0) {
    w.op = op;
    w.mask = mask;
    w.width = width;
    w.where = where;
  } else if (w.op != op || w.mask != mask || w.where.line() != where.line() ||
             std::strcmp(w.where.file_name(), where.file_name()) != 0) {
    fail("lanes of warp " + std::to_string(wid) + " meet different _sync intrinsics or masks: " +
         where_str(w.where) + " and " + where_str(where));
  }
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  w.value[lane] = bits;
  w.arg[lane] = arg;
  w.arrived |= 1u << lane;
  if (w.arrived != w.mask) {
    f.where = where;
    f.state = State::AtWarp;
    switch_to_scheduler(&f);
  } else {
    unsigned base_lane = wid * 32;
    unsigned ballot = 0;
    bool any = false, all = true;
    for (unsigned l = 0; l < 32; ++l)
      if (mask >> l & 1u) {
        bool p = w.value[l] != 0;
        ballot |= unsigned(p) << l;
        any |= p;
        all &= p;
      }
    for (unsigned l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      int seg = int(l) & ~(w.width - 1), pos = int(l) - seg;
      int src = int(l);
      switch (op) {
        case WarpOp::Shfl: src = seg + (w.arg[l] & (w.width - 1)); break;
        case WarpOp::ShflUp: src = pos >= w.arg[l] ? int(l) - w.arg[l] : int(l); break;
        case WarpOp::ShflDown: src = pos + w.arg[l] < w.width ? int(l) + w.arg[l] : int(l); break;
        case WarpOp::ShflXor: {
          int x = int(l) ^ w.arg[l];
          src = x < seg + w.width ? x : int(l);
          break;
        }
        default: break;
      }
      uint64_t r = 0;
      switch (op) {
        case WarpOp::Ballot: r = ballot; break;
        case WarpOp::Any: r = any; break;
        case WarpOp::All: r = all; break;
        case WarpOp::SyncWarp: r = 0; break;
        default:
          if (src < 0 || src > 31 || !(mask >> src & 1u)) {
            w.arrived = 0;
            fail("shuffle at " + where_str(where) + ": lane " + std::to_string(l) + " reads lane " +
                 std::to_string(src) + " outside the mask");
          }
          r = w.value[src];
      }
      Fiber& g = L->fibers[base_lane + l];
      g.warp_result = r;
      if (&g != &f) g.state = State::Ready;
    }
    w.arrived = 0;
    w.op = WarpOp::None;
  }
  T out;
  std::memcpy(&out, &f.warp_result, sizeof(T));
  return out;
}

// ---------------------------------------------------------------------------------------------------
// C ABI per kernel
// ---------------------------------------------------------------------------------------------------
template <class A>
constexpr char kind_of() {
  using T = std::remove_cvref_t<A>;
  if constexpr (std::is_pointer_v<T>) return std::is_const_v<std::remove_pointer_t<T>> ? 'r' : 'p';
  else if constexpr (std::is_floating_point_v<T> || std::is_same_v<T, __half>) return 'f';
  else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) return 'i';
  else if constexpr (std::is_integral_v<T>) return 'u';
  else return 's';
}

template <class... A>
int signature(void (*)(A...), char* kinds, size_t* sizes, int cap) {
  constexpr char k[] = {kind_of<A>()..., 0};
  constexpr size_t s[] = {sizeof(std::remove_cvref_t<A>)..., 0};
  for (int i = 0; i < int(sizeof...(A)) && i < cap; ++i) {
    kinds[i] = k[i];
    sizes[i] = s[i];
  }
  return int(sizeof...(A));
}

template <class... A>
struct Call {
  void (*fn)(A...);
  void** params;
  template <size_t... I>
  void go(std::index_sequence<I...>) {
    fn(*static_cast<std::remove_cvref_t<A>*>(params[I])...);
  }
  static void run(void* self) { static_cast<Call*>(self)->go(std::index_sequence_for<A...>{}); }
};

template <class... A>
int launch_kernel(void (*fn)(A...), void** params, const unsigned* grid, const unsigned* block, size_t shared,
                  unsigned flags, unsigned long long seed, char* err, size_t errlen) {
  Call<A...> call{fn, params};
  Launch L;
  L.body = &Call<A...>::run;
  L.ctx = &call;
  return launch(L, grid, block, shared, flags, seed, err, errlen);
}

}  // namespace cuda_emu

#define CUDA_EMU_EXPORT(name)                                                                              \
  extern "C" __attribute__((visibility("default"))) int cuda_emu_launch_##name(                            \
      void** params, const unsigned* grid, const unsigned* block, size_t shared, unsigned flags,           \
      unsigned long long seed, char* err, size_t errlen) {                                                 \
    return ::cuda_emu::launch_kernel(&name, params, grid, block, shared, flags, seed, err, errlen);         \
  }                                                                                                        \
  extern "C" __attribute__((visibility("default"))) int cuda_emu_signature_##name(char* kinds, size_t* sizes, \
                                                                                  int cap) {               \
    return ::cuda_emu::signature(&name, kinds, sizes, cap);                                                \
  }

// ---------------------------------------------------------------------------------------------------
// Kernel-facing synchronisation
// ---------------------------------------------------------------------------------------------------
#define __syncthreads() ::cuda_emu::syncthreads(std::source_location::current())

#define __shfl_sync(mask, v, src, ...) \
  ::cuda_emu::warp_op(::cuda_emu::WarpOp::Shfl, (mask), (v), (src), CUDA_EMU_WIDTH(__VA_ARGS__), std::source_location::current())
#define __shfl_up_sync(mask, v, d, ...) \
  ::cuda_emu::warp_op(::cuda_emu::WarpOp::ShflUp, (mask), (v), int(d), CUDA_EMU_WIDTH(__VA_ARGS__), std::source_location::current())
#define __shfl_down_sync(mask, v, d, ...) \
  ::cuda_emu::warp_op(::cuda_emu::WarpOp::ShflDown, (mask), (v), int(d), CUDA_EMU_WIDTH(__VA_ARGS__), std::source_location::current())
#define __shfl_xor_sync(mask, v, m, ...) \
  ::cuda_emu::warp_op(::cuda_emu::WarpOp::ShflXor, (mask), (v), int(m), CUDA_EMU_WIDTH(__VA_ARGS__), std::source_location::current())
#define __ballot_sync(mask, p) \
  unsigned(::cuda_emu::warp_op(::cuda_emu::WarpOp::Ballot, (mask), uint64_t((p) != 0), 0, 32, std::source_location::current()))
#define __any_sync(mask, p) \
  int(::cuda_emu::warp_op(::cuda_emu::WarpOp::Any, (mask), uint64_t((p) != 0), 0, 32, std::source_location::current()))
#define __all_sync(mask, p) \
  int(::cuda_emu::warp_op(::cuda_emu::WarpOp::All, (mask), uint64_t((p) != 0), 0, 32, std::source_location::current()))
#define __syncwarp(...) \
  (void)::cuda_emu::warp_op(::cuda_emu::WarpOp::SyncWarp, CUDA_EMU_MASK(__VA_ARGS__), uint64_t(0), 0, 32, std::source_location::current())

// optional trailing width / mask arguments
#define CUDA_EMU_WIDTH(...) (32 __VA_OPT__(*0 + (__VA_ARGS__)))
#define CUDA_EMU_MASK(...) (0xffffffffu __VA_OPT__(*0u + (__VA_ARGS__)))
