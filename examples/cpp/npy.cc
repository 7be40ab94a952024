#include "npy.h"

#include <fstream>
#include <regex>
#include <stdexcept>

namespace {

struct Descr {
  const char* text;
  ONNXTensorElementDataType type;
  size_t size;
};

const Descr kDescrs[] = {
    {"<f4", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 4},  {"<f8", ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, 8},
    {"<i8", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 8},  {"<i4", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 4},
    {"|u1", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1},  {"|i1", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, 1},
    {"|b1", ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, 1},
};

}  // namespace

size_t element_size(ONNXTensorElementDataType type) {
  for (const Descr& d : kDescrs)
    if (d.type == type) return d.size;
  throw std::runtime_error("unsupported tensor element type " + std::to_string(int(type)));
}

Array read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  char magic[8];
  if (!in.read(magic, 8) || std::string(magic, 6) != "\x93NUMPY") throw std::runtime_error(path + ": not a .npy file");
  uint32_t header_length = 0;
  if (magic[6] == 1) {
    uint8_t b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_length = b[0] | (b[1] << 8);
  } else {
    uint8_t b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_length = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  }
  if (!in || header_length > 1 << 20) throw std::runtime_error(path + ": bad .npy header");
  std::string header(header_length, '\0');
  in.read(header.data(), header_length);
  std::smatch descr, shape;
  if (!std::regex_search(header, descr, std::regex("'descr':\\s*'([^']+)'")) ||
      !std::regex_search(header, shape, std::regex("'shape':\\s*\\(([^)]*)\\)")))
    throw std::runtime_error(path + ": bad .npy header");
  if (header.find("'fortran_order': True") != std::string::npos)
    throw std::runtime_error(path + ": Fortran-order arrays are not read");
  Array a{ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED, {}, {}};
  size_t size = 0;
  for (const Descr& d : kDescrs)
    if (descr[1] == d.text) a.type = d.type, size = d.size;
  if (size == 0) throw std::runtime_error(path + ": dtype " + descr[1].str() + " is not read");
  const std::string dims = shape[1];
  static const std::regex number("[0-9]+");
  std::sregex_iterator it(dims.begin(), dims.end(), number), end;
  size_t count = 1;
  for (; it != end; ++it) {
    a.shape.push_back(std::stoll(it->str()));
    count *= size_t(a.shape.back());
  }
  a.bytes.resize(count * size);
  if (!in.read(reinterpret_cast<char*>(a.bytes.data()), std::streamsize(a.bytes.size())))
    throw std::runtime_error(path + ": shorter than its header says");
  return a;
}

void write_npy(const std::string& path, const Array& a) {
  const char* text = nullptr;
  for (const Descr& d : kDescrs)
    if (d.type == a.type) text = d.text;
  if (text == nullptr) throw std::runtime_error(path + ": output element type is not written");
  std::string shape;
  for (int64_t d : a.shape) shape += std::to_string(d) + ", ";
  if (a.shape.size() > 1) shape.erase(shape.size() - 2);  // (3, 4); a 1-D shape keeps its comma: (3,)
  if (a.shape.size() == 1) shape.erase(shape.size() - 1);
  std::string header = "{'descr': '" + std::string(text) + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  const uint16_t length = uint16_t(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.put(char(length & 0xff)).put(char(length >> 8));
  out << header;
  out.write(reinterpret_cast<const char*>(a.bytes.data()), std::streamsize(a.bytes.size()));
  if (!out) throw std::runtime_error(path + ": cannot write");
}
