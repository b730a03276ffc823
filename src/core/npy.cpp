#include "core/npy.h"

#include <cctype>
#include <cstring>

#include "core/error.h"
#include "core/file.h"
#include "core/limits.h"

namespace mamba {

namespace {

size_t descr_size(const std::string& descr) {
  if (descr.size() != 3 || (descr[0] != '<' && descr[0] != '|')) return 0;
  const char kind = descr[1], size = descr[2];
  if (kind != 'f' && kind != 'i' && kind != 'u') return 0;
  return (size == '1' || size == '2' || size == '4' || size == '8') ? static_cast<size_t>(size - '0') : 0;
}

void write_npy_bytes(const std::filesystem::path& path, const char* descr, const void* data, size_t elem,
                     const std::vector<int64_t>& shape) {
  std::string dims;
  size_t numel = 1;
  for (int64_t d : shape) {
    dims += std::to_string(d) + ", ";
    numel *= static_cast<size_t>(d);
  }
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  uint16_t len = static_cast<uint16_t>(header.size());
  write_file_atomic(path, [&](std::FILE* out) {
    write_bytes(out, "\x93NUMPY\x01\x00", 8, path);
    write_bytes(out, &len, 2, path);
    write_bytes(out, header.data(), header.size(), path);
    write_bytes(out, data, numel * elem, path);
  });
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n = sat_mul(n, d);  // read_npy has matched it to the file: it never saturates there
  return n;
}

std::vector<float> NpyArray::as_f32() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  if (descr == "<f4") {
    if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * 4);
  } else if (descr == "<f8") {
    for (size_t i = 0; i < out.size(); i++) {
      double v;
      std::memcpy(&v, bytes.data() + 8 * i, 8);
      out[i] = static_cast<float>(v);
    }
  } else {
    fail("npy array of dtype ", descr, " where float32 or float64 was expected");
  }
  return out;
}

std::vector<int64_t> NpyArray::as_i64() const {
  std::vector<int64_t> out(static_cast<size_t>(numel()));
  size_t size = descr_size(descr);
  if (descr[1] == 'f' || size == 0) fail("npy array of dtype ", descr, " where integers were expected");
  for (size_t i = 0; i < out.size(); i++) {
    const uint8_t* p = bytes.data() + size * i;
    if (descr[1] == 'i') {
      switch (size) {
        case 1: out[i] = static_cast<int8_t>(*p); break;
        case 2: { int16_t v; std::memcpy(&v, p, 2); out[i] = v; break; }
        case 4: { int32_t v; std::memcpy(&v, p, 4); out[i] = v; break; }
        default: { int64_t v; std::memcpy(&v, p, 8); out[i] = v; break; }
      }
    } else {
      switch (size) {
        case 1: out[i] = *p; break;
        case 2: { uint16_t v; std::memcpy(&v, p, 2); out[i] = v; break; }
        case 4: { uint32_t v; std::memcpy(&v, p, 4); out[i] = v; break; }
        default: {
          uint64_t v;
          std::memcpy(&v, p, 8);
          if (v > static_cast<uint64_t>(INT64_MAX)) fail("npy array value ", v, " is out of range");
          out[i] = static_cast<int64_t>(v);
          break;
        }
      }
    }
  }
  return out;
}

NpyArray read_npy(const std::filesystem::path& path) {
  MappedFile file(path);
  const std::string where = path.string();
  const uint8_t* p = file.data();
  if (file.size() < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0) fail(where, ": not a .npy file (bad magic)");
  size_t header_len, offset;
  if (p[6] == 1) {
    header_len = static_cast<size_t>(p[8]) | (static_cast<size_t>(p[9]) << 8);
    offset = 10;
  } else if (p[6] == 2 || p[6] == 3) {
    if (file.size() < 12) fail(where, ": truncated .npy header");
    uint32_t len;
    std::memcpy(&len, p + 8, 4);
    header_len = len;
    offset = 12;
  } else {
    fail(where, ": unsupported .npy version ", int(p[6]));
  }
  if (offset + header_len > file.size()) fail(where, ": .npy header runs past the end of the file");
  std::string header(reinterpret_cast<const char*>(p + offset), header_len);
  NpyArray array;
  // The header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
  auto value_of = [&](const std::string& key) -> size_t {
    size_t at = header.find("'" + key + "'");
    if (at == std::string::npos) fail(where, ": .npy header has no ", key);
    at = header.find(':', at);
    if (at == std::string::npos) fail(where, ": .npy header is malformed at ", key);
    return header.find_first_not_of(' ', at + 1);
  };
  size_t at = value_of("descr");
  size_t end = at == std::string::npos ? at : header.find('\'', at + 1);
  if (at == std::string::npos || header[at] != '\'' || end == std::string::npos) fail(where, ": .npy descr is malformed");
  array.descr = header.substr(at + 1, end - at - 1);
  at = value_of("fortran_order");
  if (at == std::string::npos) fail(where, ": .npy fortran_order is malformed");
  if (header.compare(at, 4, "True") == 0) fail(where, ": Fortran-ordered .npy arrays are not supported");
  at = value_of("shape");
  end = at == std::string::npos ? at : header.find(')', at);
  if (at == std::string::npos || header[at] != '(' || end == std::string::npos) fail(where, ": .npy shape is malformed");
  if (descr_size(array.descr) == 0) fail(where, ": unsupported .npy dtype ", array.descr);
  // The size in bytes saturates (core/limits.h) so that no shape can wrap around to match the file.
  int64_t nbytes = static_cast<int64_t>(descr_size(array.descr));
  for (size_t i = at + 1; i < end;) {
    if (std::isdigit(static_cast<unsigned char>(header[i]))) {
      int64_t d = 0;
      for (; i < end && std::isdigit(static_cast<unsigned char>(header[i])); i++) d = sat_add(sat_mul(d, 10), header[i] - '0');
      if (d == INT64_MAX) fail(where, ": .npy shape ", header.substr(at, end - at + 1), " is out of range");
      array.shape.push_back(d);
      nbytes = sat_mul(nbytes, d);
    } else if (header[i] == ',' || header[i] == ' ' || header[i] == 'L') {
      i++;
    } else {
      fail(where, ": .npy shape is malformed");
    }
  }
  const uint64_t data_bytes = file.size() - offset - header_len;
  if (static_cast<uint64_t>(nbytes) != data_bytes) {
    fail(where, ": .npy data is ", data_bytes, " bytes, shape ", header.substr(at, end - at + 1), " of ",
         array.descr, " needs ", nbytes < INT64_MAX ? std::to_string(nbytes) : format_bytes(nbytes));
  }
  check_memory(nbytes, where + ": the array");
  array.bytes.assign(p + offset + header_len, p + offset + header_len + data_bytes);
  return array;
}

void write_npy(const std::filesystem::path& path, const float* data, const std::vector<int64_t>& shape) {
  write_npy_bytes(path, "<f4", data, 4, shape);
}

void write_npy(const std::filesystem::path& path, const int32_t* data, const std::vector<int64_t>& shape) {
  write_npy_bytes(path, "<i4", data, 4, shape);
}

}  // namespace mamba
