// The artifact's manifest.json (graphc.artifact): read, and every listed file checked against its
// sha256 and size, no unlisted file present.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

nlohmann::json verified_manifest(const std::string& directory);  // throws std::runtime_error
