#include "manifest.h"

#include <openssl/evp.h>

#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace {

std::string sha256(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> chunk(1 << 20);
  while (in.read(chunk.data(), std::streamsize(chunk.size())) || in.gcount() > 0)
    EVP_DigestUpdate(ctx, chunk.data(), size_t(in.gcount()));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx, digest, &length);
  EVP_MD_CTX_free(ctx);
  std::ostringstream hex;
  for (unsigned int i = 0; i < length; ++i) hex << std::hex << std::setw(2) << std::setfill('0') << int(digest[i]);
  return hex.str();
}

}  // namespace

nlohmann::json verified_manifest(const std::string& directory) {
  const fs::path root(directory);
  std::ifstream in(root / "manifest.json");
  if (!in) throw std::runtime_error(directory + ": no manifest.json");
  nlohmann::json manifest;
  try {
    in >> manifest;
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(directory + "/manifest.json: not valid JSON");
  }
  if (!manifest.is_object() || manifest.value("format", "") != "graphc-artifact")
    throw std::runtime_error(directory + "/manifest.json: not a graphc artifact manifest");
  if (manifest.value("format_version", 0) != 1)
    throw std::runtime_error(directory + "/manifest.json: format version " + manifest["format_version"].dump() +
                             "; this app reads version 1");
  const auto& files = manifest["files"];
  if (!files.is_object() || !files.contains(manifest.value("model", "")))
    throw std::runtime_error(directory + "/manifest.json: its file list does not name the model");
  for (const auto& [name, entry] : files.items()) {
    const fs::path path = root / name;
    if (fs::path(name).filename() != name) throw std::runtime_error(directory + ": " + name + " is not a plain name");
    if (!fs::is_regular_file(path)) throw std::runtime_error(directory + ": " + name + " is missing");
    if (!entry.is_object() || fs::file_size(path) != entry.value("bytes", uint64_t(0)) ||
        sha256(path) != entry.value("sha256", std::string()))
      throw std::runtime_error(directory + ": " + name + " does not match its sha256 and size in manifest.json");
  }
  for (const auto& item : fs::directory_iterator(root)) {
    const std::string name = item.path().filename().string();
    if (name != "manifest.json" && !files.contains(name))
      throw std::runtime_error(directory + ": " + name + " not listed in manifest.json");
  }
  return manifest;
}
