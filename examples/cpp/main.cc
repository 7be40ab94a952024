// graphc_run DIR --input NAME=FILE.npy [--input ...] [--out OUTDIR] [--runs N] [--threads T]
//
// Loads a graphc artifact directory without graphc: verifies manifest.json's checksums (and that
// no unlisted file is there), registers graphc's kernel library if the manifest names one, runs
// the model on the .npy inputs, writes each output as OUTDIR/<name>.npy and prints the latency
// over N runs (median and min). Any failure is one line on stderr and exit 2.
//
// The C++ API headers it is built with may be older than the onnxruntime it links (they come
// from the npm package, the runtime from the Python wheel): the app asks the runtime for the
// headers' API version and refuses to run if the runtime is older than the headers.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "manifest.h"
#include "npy.h"
#include "onnxruntime_cxx_api.h"

namespace fs = std::filesystem;

struct Options {
  std::string directory, out;
  std::vector<std::pair<std::string, std::string>> inputs;
  int runs = 10, threads = 1;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--input") {
      const std::string item = value();
      const size_t eq = item.find('=');
      if (eq == std::string::npos) throw std::runtime_error("--input takes NAME=FILE.npy, got " + item);
      o.inputs.emplace_back(item.substr(0, eq), item.substr(eq + 1));
    } else if (arg == "--out") {
      o.out = value();
    } else if (arg == "--runs") {
      o.runs = std::stoi(value());
    } else if (arg == "--threads") {
      o.threads = std::stoi(value());
    } else if (o.directory.empty() && arg.rfind("--", 0) != 0) {
      o.directory = arg;
    } else {
      throw std::runtime_error("unknown argument " + arg);
    }
  }
  if (o.directory.empty() || o.inputs.empty())
    throw std::runtime_error("usage: graphc_run DIR --input NAME=FILE.npy [...] [--out OUTDIR] [--runs N] [--threads T]");
  if (o.runs < 1 || o.threads < 1) throw std::runtime_error("--runs and --threads must be at least 1");
  return o;
}

int run(const Options& o) {
  if (OrtGetApiBase()->GetApi(ORT_API_VERSION) == nullptr)
    throw std::runtime_error(std::string("this onnxruntime (") + OrtGetApiBase()->GetVersionString() +
                             ") is older than the headers the app was built with (API " +
                             std::to_string(ORT_API_VERSION) + ")");
  const nlohmann::json manifest = verified_manifest(o.directory);
  // 8-bit int8 weights read by onnxruntime's u8 x s8 kernels add in a saturating int16 on AVX2
  // CPUs without VNNI (the manifest's cpu.saturates_without_vnni): warn, as graphc build --check does
  const auto& cpu = manifest.contains("cpu") ? manifest["cpu"] : nlohmann::json::object();
  if (cpu.is_object() && cpu.value("saturates_without_vnni", false) && __builtin_cpu_supports("avx2") &&
      !__builtin_cpu_supports("avx512vnni") && !__builtin_cpu_supports("avxvnni"))
    std::fprintf(stderr, "graphc_run: warning: this CPU adds u8 x s8 products in a saturating int16: the model's 8-bit "
                         "weights can give wrong sums here (rebuild with int8:weight_bits=7)\n");
  Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "graphc_run");
  Ort::SessionOptions options;
  options.SetIntraOpNumThreads(o.threads);
  options.SetInterOpNumThreads(1);
  if (manifest.contains("custom_op_library") && manifest["custom_op_library"].is_string())
    options.RegisterCustomOpsLibrary((fs::path(o.directory) / manifest["custom_op_library"].get<std::string>()).c_str());
  const fs::path model = fs::path(o.directory) / manifest["model"].get<std::string>();
  Ort::Session session(env, model.c_str(), options);

  std::vector<Array> arrays;
  std::vector<std::string> input_names;
  for (const auto& [name, file] : o.inputs) {
    arrays.push_back(read_npy(file));
    input_names.push_back(name);
  }
  Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<Ort::Value> values;
  for (Array& a : arrays)
    values.push_back(Ort::Value::CreateTensor(memory, a.bytes.data(), a.bytes.size(), a.shape.data(), a.shape.size(),
                                              a.type));
  std::vector<const char*> in_names, out_names;
  for (const std::string& n : input_names) in_names.push_back(n.c_str());
  Ort::AllocatorWithDefaultOptions allocator;
  std::vector<std::string> outputs;
  for (size_t i = 0; i < session.GetOutputCount(); ++i)
    outputs.push_back(session.GetOutputNameAllocated(i, allocator).get());
  for (const std::string& n : outputs) out_names.push_back(n.c_str());

  std::vector<Ort::Value> results;
  std::vector<double> ms;
  for (int r = 0; r < o.runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    results = session.Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(), values.size(), out_names.data(),
                          out_names.size());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  if (!o.out.empty()) {
    fs::create_directories(o.out);
    for (size_t i = 0; i < results.size(); ++i) {
      auto info = results[i].GetTensorTypeAndShapeInfo();
      Array a{info.GetElementType(), info.GetShape(), {}};
      const auto* data = static_cast<const uint8_t*>(results[i].GetTensorRawData());
      a.bytes.assign(data, data + info.GetElementCount() * element_size(a.type));
      write_npy((fs::path(o.out) / (outputs[i] + ".npy")).string(), a);
    }
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  std::printf("%s: %zu outputs; %d runs, %d threads: median %.3f ms, min %.3f ms (onnxruntime %s, headers API %d)\n",
              o.directory.c_str(), results.size(), o.runs, o.threads, sorted[sorted.size() / 2], sorted.front(),
              OrtGetApiBase()->GetVersionString(), ORT_API_VERSION);
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::string message = e.what();
    std::replace(message.begin(), message.end(), '\n', ' ');
    std::fprintf(stderr, "graphc_run: error: %s\n", message.c_str());
    return 2;
  }
}
