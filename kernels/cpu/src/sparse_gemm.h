// graphc sparse INT8 GEMM: the weight format and the per-ISA entry points.
//
// Weight format ("1x4 block CSC"): W is K x N int8 (K the reduction axis). K is padded to
// K4 = ceil(K / 4) groups of 4 consecutive reduction indices. For each output column n, the
// groups that hold a non-zero weight are listed in col_ptr[n] .. col_ptr[n + 1] - 1:
// block_k[b] is the group (k = 4 * block_k[b] + j) and values[4 * b + j] its 4 weights
// (zero where the group is partly zero). Any sparsity pattern fits; a 1x4 block pattern
// along K skips every zero, unstructured sparsity only its all-zero groups.
//
// The integer product is C[m, n] = sum_k (A[m, k] - a_zero_point) * W[k, n], A uint8,
// computed as sum_k A*W - a_zero_point * colsum(W[:, n]) in int32. With K * 255 * 128 below
// 2^31 (K below 65793) no step of any path can overflow, so every path equals an int64 reference.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace graphc {

// one 4-weight group as an int32 (the broadcast unit of the vector kernels), unaligned-safe
inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

enum class Isa { scalar = 0, avx2 = 1, avx512vnni = 2, amx = 3 };

struct SparseWeights {
  int64_t k;             // reduction length (A's last dim)
  int64_t n;             // output columns
  const int32_t* col_ptr;  // n + 1 entries, col_ptr[0] == 0, non-decreasing
  const int32_t* block_k;  // col_ptr[n] entries, each < ceil(k / 4), increasing within a column
  const int8_t* values;    // 4 * col_ptr[n] entries
  // for the AMX kernel: the kept (non-empty) 16 x 64 tiles of each pair of 16-column panels
  // (columns 32 q .. 32 q + 31), in the order the kernel reads them: pair q's steps are
  // pair_ptr[q] .. pair_ptr[q + 1] - 1, step s = 4 * (its K tile) + (1 if the first panel's tile is
  // kept) + (2 if the second's), its tiles 1 KB each ([16 groups of 4 along K][16 columns][4], the
  // layout TDPBUSD reads) from pair_tiles + 1024 * pair_first_tile[q] on; made once by amx_pairs_index
  // and amx_pairs_fill for constant weights, on every run for others
  const int8_t* pair_tiles = nullptr;
  const int32_t* pair_ptr = nullptr;
  const int32_t* pair_steps = nullptr;
  const int64_t* pair_first_tile = nullptr;
  // optional, for the AVX2 tile kernel: only the kept (non-empty) tiles, panel by panel: panel p's
  // are kept_ptr[p] .. kept_ptr[p + 1] - 1, tile i at K offset 64 * kept_k[i], its bytes at
  // kept_tiles + 1024 * i in the layout above; made once by compact_tiles for constant weights
  const int8_t* kept_tiles = nullptr;
  const int32_t* kept_ptr = nullptr;
  const int32_t* kept_k = nullptr;
  // optional, for the AVX2 few-rows panel kernel (constant weights whose zeros come in blocks of 8
  // outputs, e.g. sparsify's block=8x4): the columns in panels of 8, each panel's 4-groups the union
  // of its columns' (panel p's are panel_ptr[p] .. panel_ptr[p + 1] - 1, group panel_k[i], its 8
  // columns' 4 weights at panel_values + 32 * i, column by column, zero where a column lacks it);
  // made once by panel_index and panel_fill
  const int8_t* panel_values = nullptr;
  const int32_t* panel_ptr = nullptr;
  const int32_t* panel_k = nullptr;
  // optional, for the AVX2 one-row kernel (constant weights that run on it): the columns in lanes of 8
  // (sliced ELLPACK), so that each vector lane sums one column and no lane waits on another. The columns
  // sorted by their number of non-zero 4-groups, most first (ties in column order), are cut into slices
  // of 8; slice s runs lane_ptr[s] .. lane_ptr[s + 1] - 1 steps (its longest column's count), step t
  // holds lane j's group index at lane_k[8 t + j] (uint16: K below 65793 keeps it below 16448; or, where K
  // is at most 1024, lane_k8[8 t + j], one byte: at one row the weights stream from memory, and a kept
  // group then reads 5 bytes instead of 6; exactly one of the two is set) and its 4
  // weights at lane_values + 32 t + 4 j; a lane past its column's count, and the lanes of the last
  // slice past N, hold group 0 with zero weights. lane_column[8 s + j] is the column lane j of slice s
  // sums (-1 for none). Sorted, a slice's columns differ little in length: little padding. Made once by
  // lane_index and lane_fill
  const uint16_t* lane_k = nullptr;
  const uint8_t* lane_k8 = nullptr;
  const int8_t* lane_values = nullptr;
  const int32_t* lane_ptr = nullptr;
  const int32_t* lane_column = nullptr;
  // every pair of weights (w[4b], w[4b+1]) and (w[4b+2], w[4b+3]) has |w0| + |w1| <= 128, so
  // vpmaddubsw's saturating int16 sum of two u8 x s8 products cannot overflow (255 * 128 = 32640);
  // true of graphc int8's 7-bit weights (|w| <= 63); set by pairs_fit_int16
  bool pairs_fit_int16 = false;
};

bool pairs_fit_int16(const SparseWeights& w);

// Runs fn(i) for i in [0, count), possibly in parallel (onnxruntime's intra-op pool).
struct ParallelFor {
  void (*run)(void* self, void (*fn)(void*, size_t), size_t count, void* arg);
  void* self;
};

// nullptr when w follows the format above, else what is wrong (no entry is read out of bounds
// by the kernels of a w that passes); blocks is the length of block_k, values holds 4 per block.
const char* validate(const SparseWeights& w, int64_t blocks);

// sums[n] = sum over k < K of W[k, n] (what a_zero_point multiplies)
void column_sums(const SparseWeights& w, int32_t* sums);

// Optional: each work item turns the int32 block it wrote into float in place (the same 4 bytes):
// y = float(product) * column_scale[n] (+ bias[n]), column_scale[n] = a_scale * b_scale[n or 0]
// in float32 -- the very operations of the Cast -> Mul -> Add nodes it replaces.
struct FloatEpilogue {
  float a_scale;
  const float* b_scale;
  bool per_column;     // b_scale holds n values, else 1
  const float* bias;   // n values, or nullptr
};

// C (m x n, row stride ldc) = A (m x k, row stride lda) times W, less a_zero_point * sums
// (int32, or float through epilogue).
void sparse_gemm_u8s8(Isa isa, int64_t m, const uint8_t* a, int64_t lda, uint8_t a_zero_point,
                      const SparseWeights& w, const int32_t* sums, int32_t* c, int64_t ldc,
                      const ParallelFor& parallel, const FloatEpilogue* epilogue = nullptr);

// The ISAs this CPU and OS can run, best last (scalar always).
bool isa_supported(Isa isa);
Isa best_isa();
const char* isa_name(Isa isa);
bool parse_isa(const char* name, Isa* out);

// per-ISA kernels (each compiled with its own target flags): one panel of rows
// [row0, row0 + rows) and the columns [n0, n1), writing C directly.
void kernel_scalar(int64_t m, const uint8_t* a, int64_t lda, const SparseWeights& w, const int32_t* colsum,
                   uint8_t zp, int64_t row0, int64_t rows, int64_t n0, int64_t n1, int32_t* c, int64_t ldc);
// packed kernels read A packed by pack_panel: [K4][R][4] bytes per panel of R rows.
// AVX2: vpmaddubsw where w.pairs_fit_int16, else 16-bit widening and vpmaddwd
// column_scale (and bias, may be null): write y = float(product) * column_scale[n] (+ bias[n]) as float
void kernel_avx2(const uint8_t* packed, int64_t panels, const SparseWeights& w, const int32_t* colsum,
                 uint8_t zp, int64_t row0, int64_t m, int64_t n0, int64_t n1, int32_t* c, int64_t ldc,
                 const float* column_scale, const float* bias);
// fewer rows than this: the AVX2 path runs kernel_avx2_gemv, one row per item (measured:
// benchmarks/sparse_gemm.py)
constexpr int64_t kGemvRows = 4;
// AVX2, one row: out[n] for n in [n0, n1) from row (ceil(K / 4) * 4 bytes, zero past K), gathering
// 8 groups of A at a time; faster than the 8-row panels below kGemvRows rows
void kernel_avx2_gemv(const uint8_t* row, const SparseWeights& w, const int32_t* colsum, uint8_t zp, int64_t n0,
                      int64_t n1, int32_t* out);
// the same over the lane form (w.lane_k or w.lane_k8 set): the columns of slices [s0, s1); column_scale (and bias, may
// be null): write y = float(product) * column_scale[n] (+ bias[n]) as float
void kernel_avx2_gemv_lanes(const uint8_t* row, const SparseWeights& w, const int32_t* colsum, uint8_t zp,
                            int64_t s0, int64_t s1, int32_t* out, const float* column_scale, const float* bias);
// the lane form of w in two steps: lane_index fills lane_ptr (ceil(n / 8) + 1) and lane_column (8 per
// slice), lane_fill the group indices (8 per step) and weights (32 bytes per step), lane_ptr.back() steps
void lane_index(const SparseWeights& w, std::vector<int32_t>* lane_ptr, std::vector<int32_t>* lane_column);
void lane_fill(const SparseWeights& w, const int32_t* lane_ptr, const int32_t* lane_column, uint16_t* lane_k,
               int8_t* lane_values);
// column_scale (and bias, may be null): write y = float(product) * column_scale[n] (+ bias[n]) as float
void kernel_avx512vnni(const uint8_t* packed, int64_t panels, const SparseWeights& w, const int32_t* colsum,
                       uint8_t zp, int64_t row0, int64_t m, int64_t n0, int64_t n1, int32_t* c, int64_t ldc,
                       const float* column_scale, const float* bias);
// the AVX-512 VNNI forms of the AVX2 tile kernel (w.kept_tiles set; any 8-bit weights; the panels [p0, p1))
// and of the one-row lane kernel (w.lane_k or w.lane_k8 set), else the same arguments
void kernel_avx512vnni_tiles(const uint8_t* a_rows, int64_t k_bytes, const SparseWeights& w, const int32_t* colsum,
                             uint8_t zp, int64_t r0, int64_t r1, int64_t p0, int64_t p1, int32_t* c, int64_t ldc,
                             const float* column_scale, const float* bias);
void kernel_avx512vnni_gemv_lanes(const uint8_t* row, const SparseWeights& w, const int32_t* colsum, uint8_t zp,
                                  int64_t s0, int64_t s1, int32_t* out, const float* column_scale, const float* bias);
// AMX: rows m0 .. m0 + 31 (m0 a multiple of 32) x columns [n0, n1) (n0 a multiple of 32), from A copied
// tile-major to [rows rounded up to 16 / 16][k_bytes / 64][16][64] (k_bytes: K rounded up to 64, zero
// padded) and w's pair form (w.pair_tiles set)
void amx_block(const uint8_t* a_tiles, int64_t m, int64_t k_bytes, const SparseWeights& w, const int32_t* colsum,
               uint8_t zp, int64_t m0, int64_t n0, int64_t n1, int32_t* c, int64_t ldc, const float* column_scale,
               const float* bias);
// the tile panels of w (k_tiles = ceil(K / 64)); sizes: panels ceil(n / 16) * k_tiles * 1024 bytes,
// nonzero ceil(n / 16) * k_tiles; tile_decompress: the one panel of columns n0 .. n0 + 15
void tile_prepack(const SparseWeights& w, int8_t* panels, uint8_t* nonzero);
void tile_decompress(const SparseWeights& w, int64_t n0, int64_t k_tiles, int8_t* panel, uint8_t* nonzero);
// the AMX pair form of w in two steps: amx_pairs_index fills pair_ptr (ceil(n / 32) + 1), pair_steps and
// pair_first_tile (ceil(n / 32) + 1, the last the number of kept tiles), amx_pairs_fill the tiles of
// pair q (1 KB each from tiles + 1024 * pair_first_tile[q])
void amx_pairs_index(const SparseWeights& w, std::vector<int32_t>* pair_ptr, std::vector<int32_t>* pair_steps,
                     std::vector<int64_t>* pair_first_tile);
void amx_pairs_fill(const SparseWeights& w, int64_t q, const int32_t* pair_ptr, const int32_t* pair_steps,
                    const int64_t* pair_first_tile, int8_t* tiles);
// AVX2 over the kept tiles (w.kept_tiles set, w.pairs_fit_int16): rows [r0, r1) of A copied to rows of
// k_bytes (K rounded up to 64, zero padded) x the 16 columns of panel p, skipping empty tiles
void kernel_avx2_tiles(const uint8_t* a_rows, int64_t k_bytes, const SparseWeights& w, const int32_t* colsum,
                       uint8_t zp, int64_t r0, int64_t r1, int64_t p, int32_t* c, int64_t ldc,
                       const float* column_scale, const float* bias);
// AVX2 over the 8-column panels (w.panel_values set, w.pairs_fit_int16): rows [0, m) of A (3 at a time), each
// copied to row_bytes (ceil(K / 4) * 4, zero past K) x the 8 columns of panel p
void kernel_avx2_panels(const uint8_t* a_rows, int64_t row_bytes, int64_t m, const SparseWeights& w,
                        const int32_t* colsum, uint8_t zp, int64_t p, int32_t* c, int64_t ldc, const float* column_scale,
                        const float* bias);
// the panel form of w in two steps: panel_index fills panel_ptr (ceil(n / 8) + 1) and panel_k (each
// panel's groups, the union of its columns'), panel_fill their weights (32 bytes per entry,
// panel_ptr[ceil(n / 8)] entries), so that the entries can be counted before the weights are copied
void panel_index(const SparseWeights& w, std::vector<int32_t>* panel_ptr, std::vector<int32_t>* panel_k);
void panel_fill(const SparseWeights& w, const int32_t* panel_ptr, const int32_t* panel_k, int8_t* panel_values);
int64_t panel_rows(Isa isa);  // R: 8 (avx2), 16 (avx512vnni)

}  // namespace graphc
