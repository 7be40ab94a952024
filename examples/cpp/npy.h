// .npy files (NumPy's format, version 1.0/2.0/3.0, little-endian, C order) read into and written
// from a flat byte buffer with a dtype and a shape. Only the dtypes model inputs and outputs use.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"

struct Array {
  ONNXTensorElementDataType type;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

Array read_npy(const std::string& path);                 // throws std::runtime_error
void write_npy(const std::string& path, const Array& a);  // throws std::runtime_error
size_t element_size(ONNXTensorElementDataType type);
