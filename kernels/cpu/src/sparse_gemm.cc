// Dispatch of the sparse u8 x s8 GEMM: CPU detection, packing of A, the split into parallel
// work items, and the scalar reference kernel.
#include "sparse_gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define GRAPHC_X86 1
#endif

namespace graphc {

namespace {

#ifdef GRAPHC_X86
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

struct CpuBits {
  bool avx2 = false, avx512 = false, vnni = false, amx = false;
};

// Linux hands a process the AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); the request is process-wide and made once
bool request_amx() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

CpuBits detect() {
  CpuBits bits;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return bits;  // OSXSAVE
  const uint64_t xcr0 = xgetbv0();
  const bool os_avx = (xcr0 & 0x6) == 0x6;            // XMM and YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return bits;
  bits.avx2 = os_avx && (b & (1u << 5));
  // AVX512F (b16), AVX512BW (b30), AVX512VL (b31), AVX512_VNNI (c11)
  bits.avx512 = os_avx512 && (b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 31));
  bits.vnni = bits.avx512 && (c & (1u << 11));
  // AMX-TILE (d24), AMX-INT8 (d25); XTILECFG and XTILEDATA state enabled by the OS (XCR0 bits 17, 18)
  bits.amx = bits.vnni && (d & (1u << 24)) && (d & (1u << 25)) && (xcr0 & 0x60000) == 0x60000 && request_amx();
  return bits;
}

const CpuBits& cpu() {
  static const CpuBits bits = detect();
  return bits;
}
#endif

struct Job {
  Isa isa;
  int64_t m, lda;
  const uint8_t* a;
  uint8_t zp;
  const SparseWeights* w;
  int32_t* c;
  int64_t ldc;
  const int32_t* colsum;
  uint8_t* packed;
  int64_t rows_per_panel, panels, panels_per_item, row_items, col_items, k4;
  int64_t k_bytes;  // AMX: A's padded row length
  const float* column_scale;  // the epilogue's, or nullptr for int32 output
  const float* bias;
};

// FloatEpilogue on rows [r0, r1) x columns [n0, n1)
void to_float(const Job& job, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
  if (job.column_scale == nullptr) return;
  for (int64_t r = r0; r < r1; ++r) {
    int32_t* row = job.c + r * job.ldc;
    for (int64_t n = n0; n < n1; ++n) {
      int32_t product;
      std::memcpy(&product, row + n, 4);
      float value = float(product) * job.column_scale[n];
      if (job.bias != nullptr) value += job.bias[n];
      std::memcpy(row + n, &value, 4);
    }
  }
}

// AMX items: 32 rows (two row tiles) x kAmxColumns columns, so that an item writes 512-byte runs of
// each output row
constexpr int64_t kAmxItemRows = 32;
constexpr int64_t kAmxColumns = 256;

void amx_item(void* arg, size_t item) {
  auto& job = *static_cast<Job*>(arg);
  const int64_t row_item = int64_t(item) % job.row_items, col_item = int64_t(item) / job.row_items;
  const int64_t n0 = col_item * kAmxColumns, n1 = std::min(job.w->n, n0 + kAmxColumns);
  amx_block(job.packed, job.m, job.k_bytes, *job.w, job.colsum, job.zp, row_item * kAmxItemRows, n0, n1, job.c,
            job.ldc, job.column_scale, job.bias);
}

// weights without the pair form (not constant): each pair's tiles filled once per run
struct PairFill {
  const SparseWeights* w;
  int8_t* tiles;
};

void fill_item(void* arg, size_t q) {
  auto& job = *static_cast<PairFill*>(arg);
  amx_pairs_fill(*job.w, int64_t(q), job.w->pair_ptr, job.w->pair_steps, job.w->pair_first_tile, job.tiles);
}

constexpr int64_t kColumnsPerItem = 64;
constexpr int64_t kItemBytes = 24 * 1024;
constexpr int64_t kScalarRows = 16;

void pack_panel(void* arg, size_t panel) {
  // [K4][R][4] bytes: row r of this panel holds A[row, 4 kb .. 4 kb + 3], zero past M and K
  auto& job = *static_cast<Job*>(arg);
  const int64_t r_count = job.rows_per_panel, k = job.w->k;
  uint8_t* out = job.packed + int64_t(panel) * job.k4 * r_count * 4;
  std::memset(out, 0, size_t(job.k4 * r_count * 4));
  for (int64_t r = 0; r < r_count; ++r) {
    const int64_t row = int64_t(panel) * r_count + r;
    if (row >= job.m) break;
    const uint8_t* src = job.a + row * job.lda;
    const int64_t whole = k / 4;  // whole groups as 4-byte copies, the last partial one by bytes
    for (int64_t kb = 0; kb < whole; ++kb) std::memcpy(out + (kb * r_count + r) * 4, src + kb * 4, 4);
    for (int64_t kk = whole * 4; kk < k; ++kk) out[(whole * r_count + r) * 4 + (kk & 3)] = src[kk];
  }
}

void gemv_item(void* arg, size_t item) {
  auto& job = *static_cast<Job*>(arg);
  const int64_t row = int64_t(item) % job.m, col_item = int64_t(item) / job.m;
  const int64_t n0 = col_item * kColumnsPerItem, n1 = std::min(job.w->n, n0 + kColumnsPerItem);
  kernel_avx2_gemv(job.packed + row * job.k4 * 4, *job.w, job.colsum, job.zp, n0, n1, job.c + row * job.ldc);
  to_float(job, row, row + 1, n0, n1);
}

// the one-row kernel over the lane form: items of kColumnsPerItem / 8 slices of one row
constexpr int64_t kSlicesPerItem = kColumnsPerItem / 8;

void lanes_item(void* arg, size_t item) {
  auto& job = *static_cast<Job*>(arg);
  const int64_t row = int64_t(item) % job.m, slice_item = int64_t(item) / job.m;
  const int64_t s0 = slice_item * kSlicesPerItem, s1 = std::min((job.w->n + 7) / 8, s0 + kSlicesPerItem);
  const auto kernel = job.isa == Isa::avx512vnni ? kernel_avx512vnni_gemv_lanes : kernel_avx2_gemv_lanes;
  kernel(job.packed + row * job.k4 * 4, *job.w, job.colsum, job.zp, s0, s1, job.c + row * job.ldc, job.column_scale,
         job.bias);
}

// the AVX2 panel path (few rows, w.panel_values set): items of kPanelsPerItem 8-column panels, all rows
constexpr int64_t kPanelsPerItem = kColumnsPerItem / 8;

void panels_item(void* arg, size_t item) {
  auto& job = *static_cast<Job*>(arg);
  const int64_t p0 = int64_t(item) * kPanelsPerItem, p1 = std::min((job.w->n + 7) / 8, p0 + kPanelsPerItem);
  for (int64_t panel = p0; panel < p1; ++panel)
    kernel_avx2_panels(job.packed, job.k4 * 4, job.m, *job.w, job.colsum, job.zp, panel, job.c, job.ldc,
                       job.column_scale, job.bias);
}

// the tile paths (AVX2, AVX-512 VNNI): items of kTileRows rows x panels_per_item 16-column panels; below
// kTileFewRows rows an item takes kTilePanelsFewRows panels, so that its work outweighs the cost of
// an item (at M=1, 80% 16x64 sparsity, one panel holds about 2 kept tiles of 768-long K)
constexpr int64_t kTileRows = 64;
constexpr int64_t kTileFewRows = 8;
constexpr int64_t kTilePanelsFewRows = 4;

void tiles_item(void* arg, size_t item) {
  auto& job = *static_cast<Job*>(arg);
  const int64_t row_item = int64_t(item) % job.row_items, panel_item = int64_t(item) / job.row_items;
  const int64_t r0 = row_item * kTileRows, r1 = std::min(job.m, r0 + kTileRows);
  const int64_t p0 = panel_item * job.panels_per_item, p1 = std::min((job.w->n + 15) / 16, p0 + job.panels_per_item);
  if (job.isa == Isa::avx512vnni) {
    kernel_avx512vnni_tiles(job.packed, job.k_bytes, *job.w, job.colsum, job.zp, r0, r1, p0, p1, job.c, job.ldc,
                            job.column_scale, job.bias);
    return;
  }
  for (int64_t panel = p0; panel < p1; ++panel)
    kernel_avx2_tiles(job.packed, job.k_bytes, *job.w, job.colsum, job.zp, r0, r1, panel, job.c, job.ldc,
                      job.column_scale, job.bias);
}

void run_item(void* arg, size_t item) {
  auto& job = *static_cast<Job*>(arg);
  const int64_t row_item = int64_t(item) % job.row_items, col_item = int64_t(item) / job.row_items;
  const int64_t n0 = col_item * kColumnsPerItem, n1 = std::min(job.w->n, n0 + kColumnsPerItem);
  if (job.isa == Isa::scalar) {
    const int64_t row0 = row_item * kScalarRows;
    const int64_t rows = std::min(kScalarRows, job.m - row0);
    kernel_scalar(job.m, job.a, job.lda, *job.w, job.colsum, job.zp, row0, rows, n0, n1, job.c, job.ldc);
    to_float(job, row0, row0 + rows, n0, n1);
    return;
  }
  const int64_t first_panel = row_item * job.panels_per_item;
  const int64_t panels = std::min(job.panels_per_item, job.panels - first_panel);
  const uint8_t* packed = job.packed + first_panel * job.k4 * job.rows_per_panel * 4;
  const int64_t row0 = first_panel * job.rows_per_panel;
  if (job.isa == Isa::avx2) {
    kernel_avx2(packed, panels, *job.w, job.colsum, job.zp, row0, job.m, n0, n1, job.c, job.ldc, job.column_scale,
                job.bias);
  } else {
    kernel_avx512vnni(packed, panels, *job.w, job.colsum, job.zp, row0, job.m, n0, n1, job.c, job.ldc,
                      job.column_scale, job.bias);
  }
}

}  // namespace

void kernel_scalar(int64_t m, const uint8_t* a, int64_t lda, const SparseWeights& w, const int32_t* colsum,
                   uint8_t zp, int64_t row0, int64_t rows, int64_t n0, int64_t n1, int32_t* c, int64_t ldc) {
  (void)m;
  for (int64_t r = row0; r < row0 + rows; ++r) {
    const uint8_t* row = a + r * lda;
    for (int64_t n = n0; n < n1; ++n) {
      int32_t acc = 0;
      for (int32_t b = w.col_ptr[n]; b < w.col_ptr[n + 1]; ++b) {
        const int64_t k0 = int64_t(w.block_k[b]) * 4;
        const int8_t* v = w.values + int64_t(b) * 4;
        for (int j = 0; j < 4 && k0 + j < w.k; ++j) acc += int32_t(row[k0 + j]) * int32_t(v[j]);
      }
      c[r * ldc + n] = acc - int32_t(zp) * colsum[n];
    }
  }
}

const char* validate(const SparseWeights& w, int64_t blocks) {
  if (w.n < 0 || w.col_ptr[0] != 0 || w.col_ptr[w.n] != blocks)
    return "col_ptr must start at 0 and end at the length of block_k";
  const int64_t groups = (w.k + 3) / 4;
  for (int64_t j = 0; j < w.n; ++j) {
    if (w.col_ptr[j + 1] < w.col_ptr[j]) return "col_ptr must not decrease";
    for (int32_t b = w.col_ptr[j]; b < w.col_ptr[j + 1]; ++b)
      if (w.block_k[b] < 0 || w.block_k[b] >= groups || (b > w.col_ptr[j] && w.block_k[b] <= w.block_k[b - 1]))
        return "block_k must increase within a column and stay below ceil(K / 4)";
  }
  return nullptr;
}

bool pairs_fit_int16(const SparseWeights& w) {
  const int64_t count = int64_t(w.col_ptr[w.n]) * 2;
  for (int64_t p = 0; p < count; ++p) {
    const int a = w.values[2 * p], b = w.values[2 * p + 1];
    if ((a < 0 ? -a : a) + (b < 0 ? -b : b) > 128) return false;
  }
  return true;
}

void column_sums(const SparseWeights& w, int32_t* sums) {
  // only weights at k < K count: a partial last group's padding multiplies A's zero padding
  for (int64_t n = 0; n < w.n; ++n) {
    int32_t sum = 0;
    for (int32_t b = w.col_ptr[n]; b < w.col_ptr[n + 1]; ++b)
      for (int j = 0; j < 4; ++j)
        if (int64_t(w.block_k[b]) * 4 + j < w.k) sum += w.values[int64_t(b) * 4 + j];
    sums[n] = sum;
  }
}

void tile_decompress(const SparseWeights& w, int64_t n0, int64_t k_tiles, int8_t* panel, uint8_t* nonzero) {
  std::memset(panel, 0, size_t(k_tiles * 1024));
  std::memset(nonzero, 0, size_t(k_tiles));
  for (int64_t j = 0; j < 16 && n0 + j < w.n; ++j)
    for (int32_t b = w.col_ptr[n0 + j]; b < w.col_ptr[n0 + j + 1]; ++b) {
      const int64_t group = w.block_k[b];
      std::memcpy(panel + group * 64 + j * 4, w.values + int64_t(b) * 4, 4);
      nonzero[group / 16] = 1;
    }
}

void panel_index(const SparseWeights& w, std::vector<int32_t>* panel_ptr, std::vector<int32_t>* panel_k) {
  const int64_t panels = (w.n + 7) / 8, groups = (w.k + 3) / 4;
  std::vector<uint8_t> used(size_t(groups), 0);
  panel_ptr->assign(size_t(panels + 1), 0);
  panel_k->clear();
  for (int64_t p = 0; p < panels; ++p) {
    for (int64_t n = p * 8; n < std::min(w.n, p * 8 + 8); ++n)  // the union of the columns' groups, in K order
      for (int32_t b = w.col_ptr[n]; b < w.col_ptr[n + 1]; ++b) used[size_t(w.block_k[b])] = 1;
    for (int64_t g = 0; g < groups; ++g)
      if (used[size_t(g)]) {
        panel_k->push_back(int32_t(g));
        used[size_t(g)] = 0;
      }
    (*panel_ptr)[size_t(p + 1)] = int32_t(panel_k->size());
  }
}

void panel_fill(const SparseWeights& w, const int32_t* panel_ptr, const int32_t* panel_k, int8_t* panel_values) {
  const int64_t panels = (w.n + 7) / 8;
  std::memset(panel_values, 0, size_t(panel_ptr[panels]) * 32);
  std::vector<int32_t> entry(size_t((w.k + 3) / 4));  // a group's entry in the panel being filled
  for (int64_t p = 0; p < panels; ++p) {
    for (int32_t i = panel_ptr[p]; i < panel_ptr[p + 1]; ++i) entry[size_t(panel_k[i])] = i;
    for (int64_t n = p * 8; n < std::min(w.n, p * 8 + 8); ++n)
      for (int32_t b = w.col_ptr[n]; b < w.col_ptr[n + 1]; ++b)
        std::memcpy(panel_values + int64_t(entry[size_t(w.block_k[b])]) * 32 + (n - p * 8) * 4,
                    w.values + int64_t(b) * 4, 4);
  }
}

void lane_index(const SparseWeights& w, std::vector<int32_t>* lane_ptr, std::vector<int32_t>* lane_column) {
  const int64_t slices = (w.n + 7) / 8;
  std::vector<int32_t> order(size_t(w.n));
  for (int64_t n = 0; n < w.n; ++n) order[size_t(n)] = int32_t(n);
  const auto count = [&w](int32_t n) { return w.col_ptr[n + 1] - w.col_ptr[n]; };
  std::stable_sort(order.begin(), order.end(), [&count](int32_t x, int32_t y) { return count(x) > count(y); });
  lane_ptr->assign(size_t(slices + 1), 0);
  lane_column->assign(size_t(slices * 8), -1);
  for (int64_t s = 0; s < slices; ++s) {
    for (int64_t j = 0; j < 8 && s * 8 + j < w.n; ++j) (*lane_column)[size_t(s * 8 + j)] = order[size_t(s * 8 + j)];
    (*lane_ptr)[size_t(s + 1)] = (*lane_ptr)[size_t(s)] + count(order[size_t(s * 8)]);  // the slice's longest
  }
}

void lane_fill(const SparseWeights& w, const int32_t* lane_ptr, const int32_t* lane_column, uint16_t* lane_k,
               int8_t* lane_values) {
  const int64_t slices = (w.n + 7) / 8;
  std::memset(lane_k, 0, size_t(lane_ptr[slices]) * 8 * sizeof(uint16_t));
  std::memset(lane_values, 0, size_t(lane_ptr[slices]) * 32);
  for (int64_t s = 0; s < slices; ++s)
    for (int64_t j = 0; j < 8; ++j) {
      const int32_t n = lane_column[s * 8 + j];
      if (n < 0) continue;
      for (int32_t b = w.col_ptr[n]; b < w.col_ptr[n + 1]; ++b) {
        const int64_t step = lane_ptr[s] + (b - w.col_ptr[n]);
        lane_k[step * 8 + j] = uint16_t(w.block_k[b]);
        std::memcpy(lane_values + step * 32 + j * 4, w.values + int64_t(b) * 4, 4);
      }
    }
}

void amx_pairs_index(const SparseWeights& w, std::vector<int32_t>* pair_ptr, std::vector<int32_t>* pair_steps,
                     std::vector<int64_t>* pair_first_tile) {
  const int64_t pairs = (w.n + 31) / 32, k_tiles = (w.k + 63) / 64;
  std::vector<uint8_t> kept(static_cast<size_t>(k_tiles));  // bit p: the pair's panel p holds a non-zero in that K tile
  pair_ptr->assign(size_t(pairs + 1), 0);
  pair_first_tile->assign(size_t(pairs + 1), 0);
  pair_steps->clear();
  for (int64_t q = 0; q < pairs; ++q) {
    std::fill(kept.begin(), kept.end(), 0);
    for (int64_t n = q * 32; n < std::min(w.n, q * 32 + 32); ++n)
      for (int32_t b = w.col_ptr[n]; b < w.col_ptr[n + 1]; ++b)
        kept[size_t(w.block_k[b] / 16)] |= uint8_t(1 << ((n - q * 32) / 16));
    int64_t tiles = 0;
    for (int64_t t = 0; t < k_tiles; ++t)
      if (kept[size_t(t)]) {
        pair_steps->push_back(int32_t(4 * t + kept[size_t(t)]));
        tiles += (kept[size_t(t)] & 1) + (kept[size_t(t)] >> 1);
      }
    (*pair_ptr)[size_t(q + 1)] = int32_t(pair_steps->size());
    (*pair_first_tile)[size_t(q + 1)] = (*pair_first_tile)[size_t(q)] + tiles;
  }
}

void amx_pairs_fill(const SparseWeights& w, int64_t q, const int32_t* pair_ptr, const int32_t* pair_steps,
                    const int64_t* pair_first_tile, int8_t* tiles) {
  int8_t* first = tiles + pair_first_tile[q] * 1024;
  std::memset(first, 0, size_t((pair_first_tile[q + 1] - pair_first_tile[q]) * 1024));
  std::vector<int64_t> where[2];  // each panel's tile of each K tile: its offset from first, or -1
  const int64_t k_tiles = (w.k + 63) / 64;
  where[0].assign(size_t(k_tiles), -1);
  where[1].assign(size_t(k_tiles), -1);
  int64_t offset = 0;
  for (int32_t s = pair_ptr[q]; s < pair_ptr[q + 1]; ++s)  // the kernel's order: panel 0's tile, then panel 1's
    for (int p = 0; p < 2; ++p)
      if (pair_steps[s] & (1 << p)) {
        where[p][size_t(pair_steps[s] / 4)] = offset;
        offset += 1024;
      }
  for (int64_t n = q * 32; n < std::min(w.n, q * 32 + 32); ++n) {
    const int64_t column = n - q * 32;
    for (int32_t b = w.col_ptr[n]; b < w.col_ptr[n + 1]; ++b) {
      const int64_t group = w.block_k[b];
      std::memcpy(first + where[column / 16][size_t(group / 16)] + (group % 16) * 64 + (column % 16) * 4,
                  w.values + int64_t(b) * 4, 4);
    }
  }
}

void tile_prepack(const SparseWeights& w, int8_t* panels, uint8_t* nonzero) {
  const int64_t k_tiles = (w.k + 63) / 64;
  for (int64_t p = 0; p * 16 < w.n; ++p)
    tile_decompress(w, p * 16, k_tiles, panels + p * k_tiles * 1024, nonzero + p * k_tiles);
}

bool isa_supported(Isa isa) {
#ifdef GRAPHC_X86
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2: return cpu().avx2;
    case Isa::avx512vnni: return cpu().vnni;
    case Isa::amx: return cpu().amx;
  }
  return false;
#else
  return isa == Isa::scalar;
#endif
}

Isa best_isa() {
  for (Isa isa : {Isa::amx, Isa::avx512vnni, Isa::avx2})
    if (isa_supported(isa)) return isa;
  return Isa::scalar;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512vnni: return "avx512vnni";
    case Isa::amx: return "amx";
  }
  return "?";
}

bool parse_isa(const char* name, Isa* out) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512vnni, Isa::amx})
    if (std::strcmp(name, isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  return false;
}

int64_t panel_rows(Isa isa) { return isa == Isa::avx2 ? 8 : 16; }

void sparse_gemm_u8s8(Isa isa, int64_t m, const uint8_t* a, int64_t lda, uint8_t a_zero_point,
                      const SparseWeights& w, const int32_t* sums, int32_t* c, int64_t ldc,
                      const ParallelFor& parallel, const FloatEpilogue* epilogue) {
  if (m <= 0 || w.n <= 0) return;
  std::vector<float> column_scale;
  if (epilogue != nullptr) {
    column_scale.resize(size_t(w.n));
    for (int64_t n = 0; n < w.n; ++n) column_scale[size_t(n)] = epilogue->a_scale * epilogue->b_scale[epilogue->per_column ? n : 0];
  }
  Job job{isa, m, lda, a, a_zero_point, &w, c, ldc, sums, nullptr, 0, 0, 0, 0, 0, (w.k + 3) / 4, 0,
          epilogue ? column_scale.data() : nullptr, epilogue ? epilogue->bias : nullptr};
  job.col_items = (w.n + kColumnsPerItem - 1) / kColumnsPerItem;
  std::vector<uint8_t> packed;
  if (isa == Isa::amx) {  // A zero-padded to whole tiles, tile-major: [M / 16][K / 64][16 rows][64 bytes]
    job.k_bytes = (w.k + 63) / 64 * 64;
    const int64_t rows = (m + 15) / 16 * 16, k_tiles = job.k_bytes / 64;
    packed.assign(size_t(rows * job.k_bytes), 0);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t t = 0; t < k_tiles; ++t)
        std::memcpy(packed.data() + ((r / 16 * k_tiles + t) * 16 + r % 16) * 64, a + r * lda + t * 64,
                    size_t(std::min<int64_t>(64, w.k - t * 64)));
    job.packed = packed.data();
    SparseWeights with_pairs = w;
    std::vector<int32_t> pair_ptr, pair_steps;
    std::vector<int64_t> pair_first_tile;
    std::vector<int8_t> pair_tiles;
    if (w.pair_tiles == nullptr) {
      amx_pairs_index(w, &pair_ptr, &pair_steps, &pair_first_tile);
      pair_tiles.resize(size_t(pair_first_tile.back() * 1024 + 1));
      with_pairs.pair_ptr = pair_ptr.data();
      with_pairs.pair_steps = pair_steps.data();
      with_pairs.pair_first_tile = pair_first_tile.data();
      PairFill fill{&with_pairs, pair_tiles.data()};
      parallel.run(parallel.self, fill_item, pair_ptr.size() - 1, &fill);
      with_pairs.pair_tiles = pair_tiles.data();
      job.w = &with_pairs;
    }
    job.row_items = (m + kAmxItemRows - 1) / kAmxItemRows;
    const int64_t col_items = (w.n + kAmxColumns - 1) / kAmxColumns;
    parallel.run(parallel.self, amx_item, size_t(job.row_items * col_items), &job);
    return;
  }
  // AVX2 and AVX-512 VNNI, few rows: the panels where the weights have them (AVX2 only), else the one-row
  // column kernel unless on tiles (over the lane form in the ISA's own instructions; the prefix-sum
  // form, for weights fed at run time, is AVX2's on both)
  const bool vector = isa == Isa::avx2 || isa == Isa::avx512vnni;
  if (vector && m < kGemvRows && (w.panel_values != nullptr || w.kept_tiles == nullptr)) {
    // rows copied to whole groups, zero past K
    packed.assign(size_t(m * job.k4 * 4), 0);
    for (int64_t r = 0; r < m; ++r) std::memcpy(packed.data() + r * job.k4 * 4, a + r * lda, size_t(w.k));
    job.packed = packed.data();
    if (w.panel_values != nullptr)
      parallel.run(parallel.self, panels_item, size_t(((w.n + 7) / 8 + kPanelsPerItem - 1) / kPanelsPerItem), &job);
    else if (w.lane_k != nullptr || w.lane_k8 != nullptr)
      parallel.run(parallel.self, lanes_item, size_t(m * (((w.n + 7) / 8 + kSlicesPerItem - 1) / kSlicesPerItem)), &job);
    else
      parallel.run(parallel.self, gemv_item, size_t(m * job.col_items), &job);
    return;
  }
  if (vector && w.kept_tiles != nullptr) {  // the tile kernels; rows copied to k_bytes, zero padded
    job.k_bytes = (w.k + 63) / 64 * 64;
    packed.assign(size_t(m * job.k_bytes), 0);
    for (int64_t r = 0; r < m; ++r) std::memcpy(packed.data() + r * job.k_bytes, a + r * lda, size_t(w.k));
    job.packed = packed.data();
    job.row_items = (m + kTileRows - 1) / kTileRows;
    // VNNI: four panels an item from kTileFewRows rows, for its kernel to take panels with the same kept tiles together
    job.panels_per_item = m < kTileFewRows ? kTilePanelsFewRows : isa == Isa::avx512vnni ? 4 : 1;
    const int64_t panel_items = ((w.n + 15) / 16 + job.panels_per_item - 1) / job.panels_per_item;
    parallel.run(parallel.self, tiles_item, size_t(job.row_items * panel_items), &job);
    return;
  }
  if (isa == Isa::scalar) {
    job.row_items = (m + kScalarRows - 1) / kScalarRows;
  } else {
    job.rows_per_panel = panel_rows(isa);
    job.panels = (m + job.rows_per_panel - 1) / job.rows_per_panel;
    // as many panels as keep an item's packed A within about half of a 48 KB L1 data cache (each
    // column's groups are read in K order across all of them), at most 8 (VNNI) or 4 (AVX2)
    const int64_t panel_bytes = job.k4 * job.rows_per_panel * 4;
    job.panels_per_item = std::clamp<int64_t>(kItemBytes / panel_bytes, 1, isa == Isa::avx512vnni ? 8 : 4);
    job.row_items = (job.panels + job.panels_per_item - 1) / job.panels_per_item;
    packed.resize(size_t(job.panels * job.k4 * job.rows_per_panel * 4 + 64));
    job.packed = packed.data();
    parallel.run(parallel.self, pack_panel, size_t(job.panels), &job);
  }
  parallel.run(parallel.self, run_item, size_t(job.row_items * job.col_items), &job);
}

}  // namespace graphc
