// CPU kernels of the student's sparse convolutions (clip2scene_core/student/sparse.py loads them with ctypes).
//
// A plain C interface over raw arrays, with no Python or torch headers: it builds in seconds with any C++17
// compiler and does not depend on the torch version it runs beside. Built three times on x86-64 (setup.py,
// CMakeLists.txt): with 64-byte vectors (AVX-512F + FMA, "v4"), 32-byte (AVX2 + FMA, "v3") and 16-byte ("base", any
// CPU; the only build elsewhere); sparse.py loads the widest one the CPU runs.
//
// A rulebook is a list of (input row, output row) pairs grouped by kernel offset: pairs [starts[k], starts[k+1])
// belong to offset k. Within one offset no output row appears twice (a shift, or a parent and one of its
// children), so the pairs of an offset can be shared among threads without two threads writing one row. Every
// output row sums its offsets in order 0, 1, ..., each product computed the same way whichever thread or tile it
// falls in: the result does not depend on the number of threads.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include <omp.h>

#ifndef C2S_VECTOR_BYTES
#define C2S_VECTOR_BYTES 16
#endif

namespace {

// A register tile: ROWS pairs by MAX_VECTORS vectors of output columns (24 of AVX-512's 32 registers, 12 of AVX2's
// 16), then narrower tiles for the columns left. Measured on the paper preset's layers (Zen 4, AVX-512): 6 x 4
// vectors 96-98 GFLOP/s, 8 x 2 83-88, 12 x 2 89-92, 7 x 3 90-99, against 97-101 for a 1024-cubed matmul.
constexpr int ROWS = 6;
constexpr int MAX_VECTORS = C2S_VECTOR_BYTES >= 64 ? 4 : 2;
constexpr int64_t DEPTH_BLOCK = 128;  // input channels per pass (the weight slice stays in L1)
constexpr int64_t PAIR_BLOCK = 96;    // pairs per pass (their input rows stay in L2)

template <typename T, typename V>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename T, typename V>
inline void store(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// outs[r][0, NV * width) += rows[r][0, depth) @ w[0, depth) x [0, NV * width) (row stride ldw), for r < R.
template <typename T, typename V, int R, int NV>
void tile(const T* const* rows, const T* w, int64_t ldw, int64_t depth, T* const* outs) {
  constexpr int width = sizeof(V) / sizeof(T);
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t c = 0; c < depth; ++c) {
    V wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = load<T, V>(w + c * ldw + v * width);
    for (int r = 0; r < R; ++r) {
      const T x = rows[r][c];
      for (int v = 0; v < NV; ++v) acc[r][v] += wv[v] * x;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store<T, V>(outs[r] + v * width, load<T, V>(outs[r] + v * width) + acc[r][v]);
}

template <typename T, typename V, int NV>
using TileFunction = void (*)(const T* const*, const T*, int64_t, int64_t, T* const*);

template <typename T, typename V, int NV, int... R>
constexpr auto tile_table(std::integer_sequence<int, R...>) {
  return std::array<TileFunction<T, V, NV>, sizeof...(R)>{&tile<T, V, R + 1, NV>...};
}

template <typename T, typename V, int NV>
void tiles(int rows, const T* const* in, const T* w, int64_t ldw, int64_t depth, T* const* outs) {
  static constexpr auto table = tile_table<T, V, NV>(std::make_integer_sequence<int, ROWS>{});
  table[rows - 1](in, w, ldw, depth, outs);
}

template <typename T>
struct Simd {
  typedef T V __attribute__((vector_size(C2S_VECTOR_BYTES)));
  static constexpr int width = C2S_VECTOR_BYTES / sizeof(T);
};

// out[pout[p]] += in[pin[p]] @ w (w: (c_in, c_out) row-major) for the pairs p in [begin, end).
template <typename T>
void convolve_pairs(const T* in, int64_t c_in, const T* w, int64_t c_out, const int64_t* pin, const int64_t* pout,
                    int64_t begin, int64_t end, T* out) {
  using V = typename Simd<T>::V;
  constexpr int width = Simd<T>::width;
  const T* rows[ROWS];
  T* outs[ROWS];
  for (int64_t block = begin; block < end; block += PAIR_BLOCK) {
    const int64_t block_end = std::min(end, block + PAIR_BLOCK);
    for (int64_t c0 = 0; c0 < c_in; c0 += DEPTH_BLOCK) {
      const int64_t depth = std::min(DEPTH_BLOCK, c_in - c0);
      int64_t j = 0;
      auto pass = [&](auto vectors, int64_t columns, auto kind) {
        for (; j + columns <= c_out; j += columns) {
          for (int64_t p = block; p < block_end; p += ROWS) {
            const int count = int(std::min<int64_t>(ROWS, block_end - p));
            for (int r = 0; r < count; ++r) {
              rows[r] = in + pin[p + r] * c_in + c0;
              outs[r] = out + pout[p + r] * c_out + j;
            }
            using Kind = typename decltype(kind)::type;
            tiles<T, Kind, decltype(vectors)::value>(count, rows, w + c0 * c_out + j, c_out, depth, outs);
          }
        }
      };
      pass(std::integral_constant<int, MAX_VECTORS>{}, MAX_VECTORS * width, std::common_type<V>{});
      if (MAX_VECTORS > 2) pass(std::integral_constant<int, 2>{}, 2 * width, std::common_type<V>{});
      pass(std::integral_constant<int, 1>{}, width, std::common_type<V>{});
      pass(std::integral_constant<int, 1>{}, 1, std::common_type<T>{});
    }
  }
}

// out (n_out, c_out), already holding its starting values, += the convolution of in (n_in, c_in) with
// weight (K, c_in, c_out) over the rulebook.
template <typename T>
void convolve(const T* in, int64_t c_in, const T* weight, int64_t c_out, const int64_t* pin, const int64_t* pout,
              const int64_t* starts, int64_t kernel_count, T* out, int threads) {
  const int64_t pairs = starts[kernel_count] - starts[0];
  // Below about a million multiply-adds per thread, waking threads costs more than it saves.
  const int64_t most = std::max<int64_t>(1, pairs * c_in * c_out / (1 << 20));
  threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, most)));
  // OpenMP, so that the threads are torch's own (torch's wheels carry libgomp.so.1, which this library then
  // binds to): a pool of our own would compete with torch's threads, which spin for a while after each of its
  // operations (two threads ran the U-Net 2x slower than one that way).
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    for (int64_t k = 0; k < kernel_count; ++k) {
      const int64_t begin = starts[k], count = starts[k + 1] - begin;
      if (count == 0) continue;
      // Whole tiles per thread; the last thread takes the remainder.
      const int64_t share = (count / team + ROWS - 1) / ROWS * ROWS;
      const int64_t first = std::min(count, t * share);
      const int64_t last = t + 1 == team ? count : std::min(count, first + share);
      if (first < last)
        convolve_pairs(in, c_in, weight + k * c_in * c_out, c_out, pin, pout, begin + first, begin + last, out);
#pragma omp barrier
    }
  }
}

// -- rulebooks ----------------------------------------------------------------------------------------------------

// Open addressing over int64 keys (>= 0), values the row numbers.
class Table {
 public:
  explicit Table(int64_t n) {
    int bits = 4;
    while ((int64_t(1) << bits) < 2 * n) ++bits;
    shift_ = 64 - bits;
    mask_ = (uint64_t(1) << bits) - 1;
    keys_.assign(mask_ + 1, -1);
    values_.resize(mask_ + 1);
  }
  // The value stored under key; if absent, stores value and returns it.
  int64_t insert(int64_t key, int64_t value) {
    for (uint64_t slot = hash(key);; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) return values_[slot];
      if (keys_[slot] < 0) {
        keys_[slot] = key;
        values_[slot] = value;
        return value;
      }
    }
  }
  int64_t find(int64_t key) const {
    for (uint64_t slot = hash(key);; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) return values_[slot];
      if (keys_[slot] < 0) return -1;
    }
  }

 private:
  uint64_t hash(int64_t key) const { return (uint64_t(key) * 0x9E3779B97F4A7C15ull) >> shift_; }
  int shift_;
  uint64_t mask_;
  std::vector<int64_t> keys_;
  std::vector<int64_t> values_;
};

// Keys linear in (batch, x, y, z), with room for shifts of up to margin cells: key(p + d) = key(p) + d . strides.
struct Keys {
  int64_t low[3], strides[3], batch_stride;
  Keys(const int64_t* coords, int64_t n, int64_t margin) {
    int64_t high[3];
    for (int a = 0; a < 3; ++a) low[a] = high[a] = n ? coords[a + 1] : 0;
    for (int64_t i = 0; i < n; ++i)
      for (int a = 0; a < 3; ++a) {
        low[a] = std::min(low[a], coords[4 * i + a + 1]);
        high[a] = std::max(high[a], coords[4 * i + a + 1]);
      }
    int64_t size[3];
    for (int a = 0; a < 3; ++a) size[a] = high[a] - low[a] + 2 * margin + 1;
    for (int a = 0; a < 3; ++a) low[a] -= margin;
    strides[2] = 1;
    strides[1] = size[2];
    strides[0] = size[1] * size[2];
    batch_stride = size[0] * strides[0];
  }
  int64_t operator()(const int64_t* row) const {
    return row[0] * batch_stride + (row[1] - low[0]) * strides[0] + (row[2] - low[1]) * strides[1] +
           (row[3] - low[2]) * strides[2];
  }
};

}  // namespace

extern "C" {

// The vector width (bytes) this build was compiled for.
int c2s_vector_bytes() { return C2S_VECTOR_BYTES; }

// Whether this CPU runs the build with vectors of this many bytes: 64 needs AVX-512F and FMA, 32 AVX2 and FMA;
// sparse.py asks the build for any CPU before it loads a wider one.
int c2s_cpu_runs(int vector_bytes) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (vector_bytes == 64) return fma && __builtin_cpu_supports("avx512f");
  if (vector_bytes == 32) return fma && __builtin_cpu_supports("avx2");
#endif
  return vector_bytes <= 16;
}

void c2s_convolve_f32(const float* in, int64_t c_in, const float* weight, int64_t c_out, const int64_t* pin,
                      const int64_t* pout, const int64_t* starts, int64_t kernel_count, float* out, int threads) {
  convolve(in, c_in, weight, c_out, pin, pout, starts, kernel_count, out, threads);
}

void c2s_convolve_f64(const double* in, int64_t c_in, const double* weight, int64_t c_out, const int64_t* pin,
                      const int64_t* pout, const int64_t* starts, int64_t kernel_count, double* out, int threads) {
  convolve(in, c_in, weight, c_out, pin, pout, starts, kernel_count, out, threads);
}

// Submanifold neighbours: neighbours[k * n + o] = the row at coords[o] + offset k - kernel / 2 (offsets in
// x-major order), or -1; counts[k] = rows found at offset k. Each search before the centre also fills its mirror
// (if q = o + d, then o = q - d), and the centre is every row itself.
void c2s_submanifold_neighbours(const int64_t* coords, int64_t n, int64_t kernel, int64_t* neighbours,
                                int64_t* counts) {
  const int64_t count = kernel * kernel * kernel, half = kernel / 2;
  std::fill(neighbours, neighbours + count * n, int64_t(-1));
  std::fill(counts, counts + count, int64_t(0));
  Keys keys(coords, n, half);
  Table table(n);
  std::vector<int64_t> key(n);
  for (int64_t i = 0; i < n; ++i) table.insert(key[i] = keys(coords + 4 * i), i);
  for (int64_t k = 0; k < count / 2; ++k) {
    const int64_t a = k / (kernel * kernel) - half, b = k / kernel % kernel - half, c = k % kernel - half;
    const int64_t shift = a * keys.strides[0] + b * keys.strides[1] + c * keys.strides[2];
    int64_t* forward = neighbours + k * n;
    int64_t* mirror = neighbours + (count - 1 - k) * n;
    for (int64_t o = 0; o < n; ++o) {
      const int64_t q = table.find(key[o] + shift);
      if (q >= 0) {
        forward[o] = q;
        mirror[q] = o;
        ++counts[k];
      }
    }
    counts[count - 1 - k] = counts[k];
  }
  for (int64_t o = 0; o < n; ++o) neighbours[count / 2 * n + o] = o;
  counts[count / 2] = n;
}

// The pairs of a neighbour table (count, n): pin, pout of size sum(counts), grouped by offset, outputs ascending.
void c2s_pairs_of_neighbours(const int64_t* neighbours, int64_t count, int64_t n, int64_t* pin, int64_t* pout) {
  int64_t p = 0;
  for (int64_t k = 0; k < count; ++k)
    for (int64_t o = 0; o < n; ++o)
      if (neighbours[k * n + o] >= 0) {
        pin[p] = neighbours[k * n + o];
        pout[p++] = o;
      }
}

// Kernel 2, stride 2: fine row i goes to the coarse row of coords[i] // 2 through offset (x % 2, y % 2, z % 2).
// coarse (n, 4) receives the coarse coordinates in order of first appearance; returns their number. pin, pout (n)
// receive the pairs grouped by offset (fine rows ascending within an offset), starts (9) the groups' bounds.
int64_t c2s_downsample(const int64_t* coords, int64_t n, int64_t* coarse, int64_t* pin, int64_t* pout,
                       int64_t* starts) {
  std::vector<int64_t> parent(n), parity(n);
  std::vector<int64_t> halved(4 * n);
  for (int64_t i = 0; i < n; ++i) {
    halved[4 * i] = coords[4 * i];
    int64_t bits = 0;
    for (int a = 1; a < 4; ++a) {
      const int64_t value = coords[4 * i + a];
      const int64_t floor_half = value >= 0 ? value / 2 : -((-value + 1) / 2);
      halved[4 * i + a] = floor_half;
      bits = bits * 2 + (value - 2 * floor_half);
    }
    parity[i] = bits;
  }
  Keys keys(halved.data(), n, 0);
  Table table(n);
  int64_t unique = 0;
  for (int64_t i = 0; i < n; ++i) {
    parent[i] = table.insert(keys(&halved[4 * i]), unique);
    if (parent[i] == unique) {
      std::memcpy(coarse + 4 * unique, &halved[4 * i], 4 * sizeof(int64_t));
      ++unique;
    }
  }
  std::fill(starts, starts + 9, int64_t(0));
  for (int64_t i = 0; i < n; ++i) ++starts[parity[i] + 1];
  for (int k = 0; k < 8; ++k) starts[k + 1] += starts[k];
  std::vector<int64_t> next(starts, starts + 8);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = next[parity[i]]++;
    pin[p] = i;
    pout[p] = parent[i];
  }
  return unique;
}

}  // extern "C"
