// The onnxruntime custom-op library: registers graphc's ops in the ai.graphc domain. W is in
// the 1x4 block CSC form of sparse_gemm.h (col_ptr int32 [N+1], block_k int32 [B], values int8
// [4B]); attribute K is A's last dimension.
//
//   SparseMatMulInteger(A uint8 [..., K], a_zero_point uint8 scalar, col_ptr, block_k, values)
//       -> Y int32 [..., N] = (A - a_zero_point) x W   (MatMulInteger's contract)
//   SparseMatMulIntegerToFloat(A uint8, a_scale float scalar, a_zero_point uint8 scalar, col_ptr,
//                              block_k, values, b_scale float [1] or [N], bias float [N] optional)
//       -> Y float [..., N] = float(integer product) * (a_scale * b_scale) (+ bias): the Cast, Mul
//       and Add after a MatMulInteger, with the very same float32 operations
//   SparseDynamicQuantizeMatMul(A float [..., K], col_ptr, block_k, values, b_scale, bias optional)
//       -> Y float: A quantized per tensor to uint8 as DynamicQuantizeLinear does (range widened
//       to hold 0, scale (max - min) / 255, zero point round(-min / scale), values round(x / scale)
//       + zp, ties to even, saturated), then as above: onnxruntime's DynamicQuantizeMatMul with a
//       symmetric int8 weight.
//
// Written against the C API only and asking it for version 17 (onnxruntime 1.17, the first with
// KernelContext_ParallelFor), so one build loads in every release since. The kernel path is
// chosen when a session creates the kernel: GRAPHC_ISA=scalar|avx2|avx512vnni|amx forces one
// (refused when this CPU or OS lacks it), else the best this CPU has.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "onnxruntime_c_api.h"
#include "quantize.h"
#include "sparse_gemm.h"

namespace {

constexpr uint32_t kApiVersion = 17;
const OrtApi* g_api = nullptr;

#define RETURN_IF_ERROR(expr)          \
  do {                                 \
    OrtStatus* status_ = (expr);       \
    if (status_ != nullptr) return status_; \
  } while (0)

OrtStatus* fail(const std::string& message) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, message.c_str()); }

struct Tensor {
  const OrtValue* value = nullptr;
  std::vector<int64_t> dims;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  void* data = nullptr;
  int64_t size() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
};

OrtStatus* describe(const OrtValue* value, Tensor* out);

OrtStatus* read_input(OrtKernelContext* context, size_t index, Tensor* out) {
  const OrtValue* value = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetInput(context, index, &value));
  if (value == nullptr) return nullptr;  // an omitted optional input
  return describe(value, out);
}

struct Weights;

enum class Kind { integer, to_float, dynamic };

struct Kernel {
  Kind kind;
  graphc::Isa isa;  // GRAPHC_ISA's path, or the best this CPU has (path_for picks per run)
  bool forced;
  int64_t k;
  Weights* constant;  // the weights when they are initializers, read once; else nullptr
  ~Kernel();
};

struct OpDef : OrtCustomOp {
  const char* name;
  Kind kind;
};

const OpDef& def(const OrtCustomOp* op) { return *static_cast<const OpDef*>(op); }

// where the weights (col_ptr, block_k, values) and b_scale start, and how many inputs there are
size_t first_weight(Kind kind) { return kind == Kind::integer ? 2 : kind == Kind::to_float ? 3 : 1; }
size_t input_total(Kind kind) { return kind == Kind::integer ? 5 : kind == Kind::to_float ? 8 : 6; }

// The weights with their column sums, checked. Constant initializers are read once, when the
// kernel is created (KernelInfoGetConstantInput_tensor); others on every run.
struct Weights {
  graphc::SparseWeights w{};
  std::vector<int32_t> sums;
  // the 16 x 64 tiles of every 16-column panel (decompressed once, for compact_tiles) and which hold a
  // non-zero
  std::vector<int8_t> tile_panels;
  std::vector<uint8_t> tile_nonzero;

  void prepack_tiles() {
    const int64_t panels = (w.n + 15) / 16, k_tiles = (w.k + 63) / 64;
    tile_panels.resize(size_t(panels * k_tiles * 1024));
    tile_nonzero.resize(size_t(panels * k_tiles));
    graphc::tile_prepack(w, tile_panels.data(), tile_nonzero.data());
    int64_t zero = 0;
    for (uint8_t any : tile_nonzero) zero += any == 0;
    zero_tile_share = tile_nonzero.empty() ? 0.0 : double(zero) / double(tile_nonzero.size());
  }
  // the AVX2 tile kernel's form: the kept tiles only (the dense panels dropped)
  std::vector<int8_t> kept_tiles;
  std::vector<int32_t> kept_ptr, kept_k;
  void compact_tiles() {
    const int64_t panels = (w.n + 15) / 16, k_tiles = (w.k + 63) / 64;
    kept_ptr.assign(size_t(panels + 1), 0);
    for (int64_t p = 0; p < panels; ++p) {
      for (int64_t t = 0; t < k_tiles; ++t)
        if (tile_nonzero[size_t(p * k_tiles + t)]) {
          kept_k.push_back(int32_t(t));
          const int8_t* tile = tile_panels.data() + (p * k_tiles + t) * 1024;
          kept_tiles.insert(kept_tiles.end(), tile, tile + 1024);
        }
      kept_ptr[size_t(p + 1)] = int32_t(kept_k.size());
    }
    drop_tiles();
    w.kept_tiles = kept_tiles.data();
    w.kept_ptr = kept_ptr.data();
    w.kept_k = kept_k.data();
  }
  void drop_tiles() {
    std::vector<int8_t>().swap(tile_panels);
    std::vector<uint8_t>().swap(tile_nonzero);
  }
  // the AMX kernel's form: the kept tiles of each 32 columns in the order the kernel reads them
  std::vector<int32_t> pair_ptr, pair_steps;
  std::vector<int64_t> pair_first_tile;
  std::vector<int8_t> pair_tiles;
  void pack_pairs() {
    graphc::amx_pairs_index(w, &pair_ptr, &pair_steps, &pair_first_tile);
    pair_tiles.resize(size_t(pair_first_tile.back() * 1024 + 1));  // + 1: never empty, so data() is set
    for (int64_t q = 0; q + 1 < int64_t(pair_ptr.size()); ++q)
      graphc::amx_pairs_fill(w, q, pair_ptr.data(), pair_steps.data(), pair_first_tile.data(), pair_tiles.data());
    w.pair_tiles = pair_tiles.data();
    w.pair_ptr = pair_ptr.data();
    w.pair_steps = pair_steps.data();
    w.pair_first_tile = pair_first_tile.data();
    const double tiles = double((w.n + 15) / 16) * double((w.k + 63) / 64);
    zero_tile_share = tiles > 0 ? 1.0 - double(pair_first_tile.back()) / tiles : 0.0;
  }
  double zero_tile_share = 0.0;  // of the tile panels' 16 x 64 tiles
  // the share of the ceil(K / 4) x N 4-groups that hold a non-zero
  double group_density() const {
    const double groups = double(w.n) * double((w.k + 3) / 4);
    return groups > 0 ? double(w.col_ptr[w.n]) / groups : 0.0;
  }
  // the AVX2 panel kernel's form (few rows): 8-column panels of the union of their columns' 4-groups
  std::vector<int32_t> panel_ptr, panel_k;
  std::vector<int8_t> panel_values;
  // in two steps, so that the entries are counted before the weights are copied (a dense weight's
  // panels would be a second copy of it): the index (each panel's groups), then the weights
  size_t index_panels() {
    graphc::panel_index(w, &panel_ptr, &panel_k);
    return panel_k.size();
  }
  void fill_panels() {
    panel_values.resize(panel_k.size() * 32);
    graphc::panel_fill(w, panel_ptr.data(), panel_k.data(), panel_values.data());
    w.panel_ptr = panel_ptr.data();
    w.panel_k = panel_k.data();
    w.panel_values = panel_values.data();
  }
  void drop_panel_index() {
    std::vector<int32_t>().swap(panel_ptr);
    std::vector<int32_t>().swap(panel_k);
  }
  // the one-row kernel's lane form (sliced ELLPACK, 2-byte group indices)
  std::vector<int32_t> lane_ptr, lane_column;
  std::vector<uint16_t> lane_k;
  std::vector<uint8_t> lane_k8;
  std::vector<int8_t> lane_values;
  void pack_lanes() {
    graphc::lane_index(w, &lane_ptr, &lane_column);
    const size_t steps = size_t(lane_ptr.back());
    lane_k.resize(steps * 8 + 1);  // + 1: never empty, so data() is set
    lane_values.resize(steps * 32 + 1);
    graphc::lane_fill(w, lane_ptr.data(), lane_column.data(), lane_k.data(), lane_values.data());
    w.lane_ptr = lane_ptr.data();
    w.lane_column = lane_column.data();
    w.lane_values = lane_values.data();
    if ((w.k + 3) / 4 <= 256) {  // one byte per group index
      lane_k8.assign(lane_k.begin(), lane_k.end());
      std::vector<uint16_t>().swap(lane_k);
      w.lane_k8 = lane_k8.data();
    } else {
      w.lane_k = lane_k.data();
    }
  }
};

OrtStatus* describe(const OrtValue* value, Tensor* out) {
  out->value = value;
  OrtTensorTypeAndShapeInfo* info = nullptr;
  RETURN_IF_ERROR(g_api->GetTensorTypeAndShape(value, &info));
  size_t rank = 0;
  OrtStatus* status = g_api->GetDimensionsCount(info, &rank);
  if (status == nullptr) {
    out->dims.resize(rank);
    status = g_api->GetDimensions(info, out->dims.data(), rank);
  }
  if (status == nullptr) status = g_api->GetTensorElementType(info, &out->type);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  RETURN_IF_ERROR(status);
  return g_api->GetTensorMutableData(const_cast<OrtValue*>(value), &out->data);
}

OrtStatus* prepare(const Tensor& col_ptr, const Tensor& block_k, const Tensor& values, int64_t k, Weights* out) {
  if (col_ptr.dims.size() != 1 || col_ptr.size() < 1) return fail("col_ptr must be a 1-D tensor of N + 1 offsets");
  const int64_t blocks = block_k.size();
  if (values.size() != 4 * blocks) return fail("values must hold 4 weights per entry of block_k");
  out->w = graphc::SparseWeights{k, col_ptr.size() - 1, static_cast<const int32_t*>(col_ptr.data),
                                 static_cast<const int32_t*>(block_k.data), static_cast<const int8_t*>(values.data)};
  if (const char* problem = graphc::validate(out->w, blocks)) return fail(problem);
  out->w.pairs_fit_int16 = graphc::pairs_fit_int16(out->w);
  out->sums.resize(size_t(out->w.n));
  graphc::column_sums(out->w, out->sums.data());
  return nullptr;
}

OrtStatus* read_weights(OrtKernelContext* context, size_t first, int64_t k, Weights* out) {
  Tensor col_ptr, block_k, values;
  RETURN_IF_ERROR(read_input(context, first, &col_ptr));
  RETURN_IF_ERROR(read_input(context, first + 1, &block_k));
  RETURN_IF_ERROR(read_input(context, first + 2, &values));
  return prepare(col_ptr, block_k, values, k, out);
}

void parallel_run(void* self, void (*fn)(void*, size_t), size_t count, void* arg) {
  if (count == 1) {
    fn(arg, 0);
    return;
  }
  OrtStatus* status = g_api->KernelContext_ParallelFor(static_cast<OrtKernelContext*>(self), fn, count, 0, arg);
  if (status != nullptr) {  // no pool: run inline
    g_api->ReleaseStatus(status);
    for (size_t i = 0; i < count; ++i) fn(arg, i);
  }
}

OrtStatus* output_for(OrtKernelContext* context, const Tensor& a, int64_t n, OrtValue** out, void** data) {
  std::vector<int64_t> dims(a.dims.begin(), a.dims.end() - 1);
  dims.push_back(n);
  RETURN_IF_ERROR(g_api->KernelContext_GetOutput(context, 0, dims.data(), dims.size(), out));
  return g_api->GetTensorMutableData(*out, data);
}

// Without GRAPHC_ISA, on a CPU with AMX: AMX from kAmxRows rows; below that AMX too, unless the
// column kernels' work (the non-zero 4-groups, skipped one by one) is cheaper than AMX's (the kept
// 16 x 64 tiles, each multiplied whole with 16-row tiles of mostly padding): the columns when
// kAmxColumnGroupCost x 4-group density < kept tile share (1 for weights fed at run time), the
// AVX-512 VNNI path's (its one-row lane kernel below kGemvRows rows, else its 16-row panels). Measured with
// benchmarks/sparse_gemm.py at M = 1 and 8 on 768 x 3072 and 768 x 768 (Xeon with AMX, 2026-12-03): a
// dense weight ran 4-4.8x faster on AMX than on either column kernel; 1x4 blocks at 80% (density 0.2,
// every tile kept) 1.1-1.3x faster on the columns, at 90% 1.2-2.2x; unstructured 90% (density 0.34,
// every tile kept) 1.3-1.5x faster on AMX; below 4 rows the one-row AVX2 kernel beat VNNI's panels by
// 1.1-1.4x (since 2026-12-04 the one-row kernel has a VNNI form, vpdpbusd in place of AVX2's three
// instructions per step, and runs there instead).
constexpr int64_t kAmxRows = 16;
constexpr double kAmxColumnGroupCost = 4.0;
// AVX2: the tile kernel (kernel_avx2_tiles.cc) multiplies every kept 16 x 64 tile densely, at about
// onnxruntime's dense speed (0.92-1.07x on BERT-base shapes, M = 1-128); the column kernels skip
// every zero 4-group, but a kept group costs them about this many times its share of the dense work
// (80% 1x4 sparsity ran at 1.3-2.8x of onnxruntime there, not the 5x of free zeros); measured on an AMD EPYC Zen 3 with
// benchmarks/sparse_gemm.py (2026-12-02). Constant weights take the tile kernel when
// kept tile share <= kAvx2ColumnGroupCost x 4-group density: a dense weight, and block patterns
// whose zeros fill whole tiles, on the tiles; scattered 1x4 groups at high sparsity on the columns.
constexpr double kAvx2ColumnGroupCost = 3.0;
// AVX2 below 4 rows: the panel kernel (kernel_avx2_panels.cc) where it reads fewer bytes than the
// kernel that would run instead, kPanelEntryBytes per panel entry (32 weights and a 4-byte index)
// against 1028 per kept tile (the tile kernel) or lane_group_bytes per non-zero 4-group (4 weights and
// a 1- or 2-byte index: the one-row kernel's lane form, whose padding is a few percent): at M = 1
// the weights stream from memory once per call, so their bytes set the time (BERT-base shapes at 80%
// sparsity, benchmarks/sparse_gemm.py). Blocks spanning 8 outputs (sparsify's block=8x4) read 36 / 32
// bytes per weight there; scattered 1x4 groups fill most of a panel's union and stay on the columns.
constexpr double kPanelEntryBytes = 36.0;
// AVX-512 VNNI (without AMX, or forced): the same choice between its tile kernel
// (kernel_avx512vnni_tiles.cc, any 8-bit weights) and its column kernels (the 16-row panels from
// kGemvRows rows, the one-row lane kernel below), with a kept 4-group costing the columns about
// kVnniColumnGroupCost times its share of the tiles' dense work. Measured with benchmarks/sparse_gemm.py
// on an AMD EPYC Zen 4 (2026-12-04, BERT-base shapes, 1 thread): the tile kernel on a dense weight
// 307-400 GOP/s at M = 128 (about onnxruntime's); the 16-row panels on 1x4 groups at 50% 231-350
// (a kept group 1.9-2.9x its dense share), at 80% 777-838; so 50% 1x4 goes to the tiles (1 <= 1.25)
// and 80% to the columns (1 > 0.5).
constexpr double kVnniColumnGroupCost = 2.5;
double lane_group_bytes(int64_t k) { return (k + 3) / 4 <= 256 ? 5.0 : 6.0; }

// the AMX rule's test: below kAmxRows rows, the column kernels' work is the smaller
bool amx_yields_to_columns(double group_density, double kept_tile_share) {
  return kAmxColumnGroupCost * group_density < kept_tile_share;
}

graphc::Isa path_for(const Kernel& kernel, const Weights& weights, int64_t m) {
  if (kernel.forced || kernel.isa != graphc::Isa::amx || m >= kAmxRows) return kernel.isa;
  const double kept_tiles = kernel.constant != nullptr ? 1.0 - kernel.constant->zero_tile_share : 1.0;
  if (!amx_yields_to_columns(weights.group_density(), kept_tiles)) return kernel.isa;
  return graphc::Isa::avx512vnni;  // its one-row lane kernel below kGemvRows rows, its 16-row panels from there
}

// constant weights: the pair form for AMX always; for AVX2 kept where enough tiles are empty
// to pay for decompressing them (and the weights' pairs fit vpmaddubsw), which sends every run of
// the kernel from 4 rows down the AVX2 tile path (sparse_gemm_u8s8); and the 8-column panels for runs
// below 4 rows where they read fewer bytes than the tiles or the columns; and, for the one-row kernel,
// the lane form: on AVX2 for what has neither tiles nor panels, on AMX for what path_for sends to the
// columns (a dense weight there never runs the one-row kernel, and needs no second copy). AVX-512 VNNI
// (without AMX, or forced): the kept tiles where they cost less than kVnniColumnGroupCost x the 4-group
// density (any 8-bit weights; every run takes its tile kernel then), else the lane form for its
// one-row kernel below 4 rows (its 16-row panels read the columns as they are)
void prepack_for(graphc::Isa isa, Weights* weights) {
  if (isa == graphc::Isa::amx) {
    weights->pack_pairs();
    if (amx_yields_to_columns(weights->group_density(), 1.0 - weights->zero_tile_share)) weights->pack_lanes();
    return;
  }
  if (isa == graphc::Isa::avx512vnni) {
    weights->prepack_tiles();
    if (1.0 - weights->zero_tile_share <= kVnniColumnGroupCost * weights->group_density()) {
      weights->compact_tiles();
    } else {
      weights->drop_tiles();
      weights->pack_lanes();
    }
    return;
  }
  if (isa == graphc::Isa::avx2 && weights->w.pairs_fit_int16) {
    weights->prepack_tiles();
    const bool tiles = 1.0 - weights->zero_tile_share <= kAvx2ColumnGroupCost * weights->group_density();
    if (tiles)
      weights->compact_tiles();
    else
      weights->drop_tiles();
    const double few_rows_bytes = tiles ? double(weights->kept_k.size()) * (1024.0 + 4.0)
                                        : lane_group_bytes(weights->w.k) * double(weights->w.col_ptr[weights->w.n]);
    if (kPanelEntryBytes * double(weights->index_panels()) < few_rows_bytes)
      weights->fill_panels();
    else
      weights->drop_panel_index();
  }
  // the one-row kernel runs what has neither tiles nor panels below kGemvRows rows on AVX2
  if (isa == graphc::Isa::avx2 && weights->w.kept_tiles == nullptr && weights->w.panel_values == nullptr)
    weights->pack_lanes();
}

OrtStatus* scalar_input(OrtKernelContext* context, size_t index, const char* what, Tensor* out) {
  RETURN_IF_ERROR(read_input(context, index, out));
  if (out->value == nullptr || out->size() != 1) return fail(std::string(what) + " must be a scalar");
  return nullptr;
}

OrtStatus* ORT_API_CALL compute(void* op_kernel, OrtKernelContext* context) {
  const Kernel& kernel = *static_cast<Kernel*>(op_kernel);
  size_t inputs = 0;
  RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(context, &inputs));
  Tensor a;
  RETURN_IF_ERROR(read_input(context, 0, &a));
  if (a.dims.empty() || a.dims.back() != kernel.k)
    return fail("A's last dimension must equal the attribute K = " + std::to_string(kernel.k));
  const int64_t m = a.size() / std::max<int64_t>(kernel.k, 1);
  const size_t first = first_weight(kernel.kind);
  Weights per_run;
  if (kernel.constant == nullptr) RETURN_IF_ERROR(read_weights(context, first, kernel.k, &per_run));
  const Weights& weights = kernel.constant ? *kernel.constant : per_run;
  const graphc::SparseWeights& w = weights.w;
  const graphc::ParallelFor parallel{parallel_run, context};
  const graphc::Isa isa = path_for(kernel, weights, m);
  OrtValue* out = nullptr;
  void* out_data = nullptr;
  RETURN_IF_ERROR(output_for(context, a, w.n, &out, &out_data));
  auto* y = static_cast<int32_t*>(out_data);  // float outputs are written in place by the epilogue
  if (kernel.kind == Kind::integer) {
    Tensor zp;
    RETURN_IF_ERROR(scalar_input(context, 1, "a_zero_point", &zp));
    graphc::sparse_gemm_u8s8(isa, m, static_cast<const uint8_t*>(a.data), kernel.k,
                             *static_cast<const uint8_t*>(zp.data), w, weights.sums.data(), y, w.n, parallel);
    return nullptr;
  }
  Tensor b_scale, bias;
  RETURN_IF_ERROR(read_input(context, first + 3, &b_scale));
  if (inputs > first + 4) RETURN_IF_ERROR(read_input(context, first + 4, &bias));
  if (b_scale.size() != 1 && b_scale.size() != w.n) return fail("b_scale must hold 1 or N scales");
  if (bias.value != nullptr && bias.size() != w.n) return fail("bias must hold N values");
  graphc::FloatEpilogue epilogue{0.0f, static_cast<const float*>(b_scale.data), b_scale.size() != 1,
                                 static_cast<const float*>(bias.data)};
  if (kernel.kind == Kind::to_float) {
    Tensor a_scale, zp;
    RETURN_IF_ERROR(scalar_input(context, 1, "a_scale", &a_scale));
    RETURN_IF_ERROR(scalar_input(context, 2, "a_zero_point", &zp));
    epilogue.a_scale = *static_cast<const float*>(a_scale.data);
    graphc::sparse_gemm_u8s8(isa, m, static_cast<const uint8_t*>(a.data), kernel.k,
                             *static_cast<const uint8_t*>(zp.data), w, weights.sums.data(), y, w.n, parallel, &epilogue);
    return nullptr;
  }
  std::unique_ptr<uint8_t[]> quantized(new uint8_t[size_t(std::max<int64_t>(a.size(), 1))]);  // not zeroed
  uint8_t zero_point = 0;
  graphc::dynamic_quantize(isa, static_cast<const float*>(a.data), a.size(), quantized.get(), &epilogue.a_scale,
                           &zero_point, parallel);
  graphc::sparse_gemm_u8s8(isa, m, quantized.get(), kernel.k, zero_point, w, weights.sums.data(), y, w.n, parallel,
                           &epilogue);
  return nullptr;
}

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                      void** out) {
  (void)api;
  int64_t k = 0;
  RETURN_IF_ERROR(g_api->KernelInfoGetAttribute_int64(info, "K", &k));
  if (k <= 0 || k >= 65793) return fail(std::string(def(op).name) + ": attribute K must be in 1..65792");
  graphc::Isa isa = graphc::best_isa();
  const char* forced = std::getenv("GRAPHC_ISA");
  const bool forced_isa = forced != nullptr && *forced != '\0';
  if (forced_isa) {
    if (!graphc::parse_isa(forced, &isa))
      return fail(std::string("GRAPHC_ISA=") + forced + " is not one of scalar, avx2, avx512vnni, amx");
    if (!graphc::isa_supported(isa))
      return fail(std::string("GRAPHC_ISA=") + forced + ": this CPU, OS or build has no such path");
  }
  Tensor parts[3];
  int constant = 1;
  const size_t first = first_weight(def(op).kind);
  for (size_t i = 0; i < 3 && constant; ++i) {
    const OrtValue* value = nullptr;
    RETURN_IF_ERROR(g_api->KernelInfoGetConstantInput_tensor(info, first + i, &constant, &value));
    if (constant) RETURN_IF_ERROR(describe(value, &parts[i]));
  }
  Weights* weights = nullptr;
  if (constant) {
    weights = new Weights;
    if (OrtStatus* status = prepare(parts[0], parts[1], parts[2], k, weights)) {
      delete weights;
      return status;
    }
    prepack_for(isa, weights);
  }
  *out = new Kernel{def(op).kind, isa, forced_isa, k, weights};
  return nullptr;
}

Kernel::~Kernel() { delete constant; }

void ORT_API_CALL destroy_kernel(void* kernel) { delete static_cast<Kernel*>(kernel); }

const char* ORT_API_CALL op_name(const OrtCustomOp* op) { return def(op).name; }
const char* ORT_API_CALL op_provider(const OrtCustomOp*) { return nullptr; }

ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp* op, size_t index) {
  constexpr auto u8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, i8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
                 i32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  static const ONNXTensorElementDataType integer[] = {u8, u8, i32, i32, i8};
  static const ONNXTensorElementDataType to_float[] = {u8, f32, u8, i32, i32, i8, f32, f32};
  static const ONNXTensorElementDataType dynamic[] = {f32, i32, i32, i8, f32, f32};
  switch (def(op).kind) {
    case Kind::integer: return integer[index];
    case Kind::to_float: return to_float[index];
    default: return dynamic[index];
  }
}
size_t ORT_API_CALL input_count(const OrtCustomOp* op) { return input_total(def(op).kind); }
ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp* op, size_t) {
  return def(op).kind == Kind::integer ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t ORT_API_CALL output_count(const OrtCustomOp*) { return 1; }
OrtCustomOpInputOutputCharacteristic ORT_API_CALL input_characteristic(const OrtCustomOp* op, size_t index) {
  const Kind kind = def(op).kind;  // the bias, last, is optional
  return kind != Kind::integer && index + 1 == input_total(kind) ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL output_characteristic(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType ORT_API_CALL input_memory(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int ORT_API_CALL one(const OrtCustomOp*) { return 1; }
int ORT_API_CALL zero(const OrtCustomOp*) { return 0; }
int ORT_API_CALL end_version(const OrtCustomOp*) { return INT_MAX; }

OpDef make_op(const char* name, Kind kind) {
  OpDef op;
  std::memset(static_cast<OrtCustomOp*>(&op), 0, sizeof(OrtCustomOp));
  op.version = kApiVersion;
  op.name = name;
  op.kind = kind;
  op.GetName = op_name;
  op.GetExecutionProviderType = op_provider;
  op.GetInputType = input_type;
  op.GetInputTypeCount = input_count;
  op.GetOutputType = output_type;
  op.GetOutputTypeCount = output_count;
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = input_characteristic;
  op.GetOutputCharacteristic = output_characteristic;
  op.GetInputMemoryType = input_memory;
  op.GetVariadicInputMinArity = one;
  op.GetVariadicInputHomogeneity = zero;
  op.GetVariadicOutputMinArity = one;
  op.GetVariadicOutputHomogeneity = zero;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  op.GetStartVersion = one;
  op.GetEndVersion = end_version;
  return op;
}

OpDef g_integer_op = make_op("SparseMatMulInteger", Kind::integer);
OpDef g_to_float_op = make_op("SparseMatMulIntegerToFloat", Kind::to_float);
OpDef g_dynamic_op = make_op("SparseDynamicQuantizeMatMul", Kind::dynamic);

}  // namespace

extern "C" {

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                  const OrtApiBase* api_base) {
  g_api = api_base->GetApi(kApiVersion);
  if (g_api == nullptr) {
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest->CreateStatus(ORT_FAIL, "graphc kernels need onnxruntime 1.17 or newer");
  }
  OrtCustomOpDomain* domain = nullptr;  // kept for the life of the process, as sessions may outlive the call
  RETURN_IF_ERROR(g_api->CreateCustomOpDomain("ai.graphc", &domain));
  RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_integer_op));
  RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_to_float_op));
  RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_dynamic_op));
  return g_api->AddCustomOpDomain(options, domain);
}

// for graphc.kernels (ctypes): the paths this machine runs
__attribute__((visibility("default"))) const char* graphc_best_isa() { return graphc::isa_name(graphc::best_isa()); }
__attribute__((visibility("default"))) int graphc_isa_supported(const char* name) {
  graphc::Isa isa;
  return graphc::parse_isa(name, &isa) && graphc::isa_supported(isa);
}
// Constant weights handed in by graphc.kernels (ctypes), prepared as a session on path isa prepares
// them; false when they are malformed
static bool prepared_for(graphc::Isa isa, int64_t k, int64_t n, const int32_t* col_ptr, const int32_t* block_k,
                         const int8_t* values, Weights* weights) {
  weights->w = graphc::SparseWeights{k, n, col_ptr, block_k, values};
  if (n < 0 || graphc::validate(weights->w, col_ptr[n]) != nullptr) return false;
  weights->w.pairs_fit_int16 = graphc::pairs_fit_int16(weights->w);
  prepack_for(isa, weights);
  return true;
}
// When constant weights (the op's col_ptr, block_k, values) run on path isa's tile kernel ("avx2" or
// "avx512vnni"), the share of their 16 x 64 tiles it multiplies (in [0, 1]); 2 when they run on its
// column kernels; -1 when the weights are malformed or the path unknown
__attribute__((visibility("default"))) double graphc_kept_tile_share(const char* isa_name, int64_t k, int64_t n,
                                                                     const int32_t* col_ptr, const int32_t* block_k,
                                                                     const int8_t* values) {
  graphc::Isa isa;
  Weights weights;
  if (!graphc::parse_isa(isa_name, &isa) || !prepared_for(isa, k, n, col_ptr, block_k, values, &weights)) return -1.0;
  return weights.w.kept_tiles != nullptr ? 1.0 - weights.zero_tile_share : 2.0;
}
// The path a session on this CPU runs constant weights on for m rows without GRAPHC_ISA ("amx",
// "avx512vnni", "avx2", "scalar"); "" when the weights are malformed
__attribute__((visibility("default"))) const char* graphc_default_path(int64_t k, int64_t n, const int32_t* col_ptr,
                                                                       const int32_t* block_k, const int8_t* values,
                                                                       int64_t m) {
  auto* weights = new Weights;
  const Kernel kernel{Kind::integer, graphc::best_isa(), false, k, weights};  // owns weights
  if (!prepared_for(kernel.isa, k, n, col_ptr, block_k, values, weights)) return "";
  return graphc::isa_name(path_for(kernel, *weights, m));
}
// Which kernel of path isa ("avx2" or "avx512vnni") runs constant weights below 4 rows: "tiles",
// "panels" (AVX2 only) or "columns" (the one-row column kernel); "" when the weights are malformed or
// the path unknown
__attribute__((visibility("default"))) const char* graphc_few_rows_kernel(const char* isa_name, int64_t k, int64_t n,
                                                                          const int32_t* col_ptr,
                                                                          const int32_t* block_k,
                                                                          const int8_t* values) {
  graphc::Isa isa;
  Weights weights;
  if (!graphc::parse_isa(isa_name, &isa) || !prepared_for(isa, k, n, col_ptr, block_k, values, &weights)) return "";
  return weights.w.panel_values != nullptr ? "panels" : weights.w.kept_tiles != nullptr ? "tiles" : "columns";
}
}
