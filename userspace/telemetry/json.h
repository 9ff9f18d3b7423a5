// json.h — the smallest JSON the stats endpoint needs: a writer (JsonOut) for its answers and a
// strict parser (json_parse) for its requests and for the tests that check the answers.
//
// What: JsonOut appends tokens to a string and places the commas itself; strings are escaped
// per RFC 8259 (control characters as \u00XX). json_parse accepts exactly RFC 8259 (no
// comments, no trailing commas, no NaN), nesting up to 64 levels, and returns a tree of Json
// values (numbers as double, plus the exact uint64 when the literal is a non-negative
// integer), or an error naming the offset.
//
// Rejected: nlohmann-json (a new package for two dozen lines of real need, and the server must
// not throw); Abseil has no JSON.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kgmp::telemetry {

class JsonOut {
 public:
  std::string& str() { return s_; }
  JsonOut& begin_obj() { sep(); s_ += '{'; first_ = true; return *this; }
  JsonOut& end_obj() { s_ += '}'; first_ = false; return *this; }
  JsonOut& begin_arr() { sep(); s_ += '['; first_ = true; return *this; }
  JsonOut& end_arr() { s_ += ']'; first_ = false; return *this; }
  JsonOut& key(std::string_view k) {
    sep();
    quote(k);
    s_ += ':';
    first_ = true;  // the value follows without a comma
    return *this;
  }
  JsonOut& str(std::string_view v) { sep(); quote(v); return *this; }
  JsonOut& num(std::uint64_t v) { sep(); absl::StrAppend(&s_, v); return *this; }
  JsonOut& num(std::int64_t v) { sep(); absl::StrAppend(&s_, v); return *this; }
  JsonOut& num(int v) { return num(static_cast<std::int64_t>(v)); }
  JsonOut& num(std::uint32_t v) { return num(static_cast<std::uint64_t>(v)); }
  JsonOut& num(double v) { sep(); absl::StrAppendFormat(&s_, "%.9g", v); return *this; }
  JsonOut& null() { sep(); s_ += "null"; return *this; }
  JsonOut& boolean(bool b) { sep(); s_ += b ? "true" : "false"; return *this; }
  JsonOut& raw(std::string_view json) { sep(); s_ += json; return *this; }
  template <class T>
  JsonOut& kv(std::string_view k, T v) {
    key(k);
    if constexpr (std::is_convertible_v<T, std::string_view>)
      return str(v);
    else
      return num(v);
  }

 private:
  void sep() {
    if (!first_) s_ += ',';
    first_ = false;
  }
  void quote(std::string_view v) {
    s_ += '"';
    for (char c : v) {
      switch (c) {
        case '"': s_ += "\\\""; break;
        case '\\': s_ += "\\\\"; break;
        case '\n': s_ += "\\n"; break;
        case '\t': s_ += "\\t"; break;
        case '\r': s_ += "\\r"; break;
        default:
          if (static_cast<unsigned char>(c) < 0x20)
            absl::StrAppendFormat(&s_, "\\u%04x", static_cast<unsigned>(c));
          else
            s_ += c;
      }
    }
    s_ += '"';
  }
  std::string s_;
  bool first_ = true;
};

struct Json {
  enum Type { kNull, kBool, kNum, kStr, kArr, kObj } type = kNull;
  bool b = false;
  double num = 0;
  std::uint64_t u64 = 0;  // exact, when the number is a non-negative integer literal
  bool is_uint = false;
  std::string s;
  std::vector<Json> arr;
  std::vector<std::string> keys;  // an object's keys, in order (duplicates kept) ...
  std::vector<Json> vals;         // ... and their values

  const Json* get(std::string_view k) const {
    for (std::size_t i = 0; i < keys.size(); i++)
      if (keys[i] == k) return &vals[i];
    return nullptr;
  }
};

namespace json_detail {
struct Parser {
  std::string_view in;
  std::size_t i = 0;
  std::string err;

  bool fail(const char* what) {
    if (err.empty()) err = absl::StrFormat("%s at offset %u", what, i);
    return false;
  }
  void ws() {
    while (i < in.size() && (in[i] == ' ' || in[i] == '\t' || in[i] == '\n' || in[i] == '\r')) i++;
  }
  bool lit(std::string_view w) {
    if (in.substr(i, w.size()) != w) return fail("bad literal");
    i += w.size();
    return true;
  }
  bool hex4(unsigned* v) {
    if (i + 4 > in.size()) return fail("short \\u escape");
    *v = 0;
    for (int k = 0; k < 4; k++) {
      char c = in[i++];
      *v <<= 4;
      if (c >= '0' && c <= '9') *v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') *v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') *v |= static_cast<unsigned>(c - 'A' + 10);
      else return fail("bad \\u escape");
    }
    return true;
  }
  void utf8(std::string& o, unsigned cp) {
    if (cp < 0x80) o += static_cast<char>(cp);
    else if (cp < 0x800) { o += static_cast<char>(0xc0 | (cp >> 6)); o += static_cast<char>(0x80 | (cp & 0x3f)); }
    else if (cp < 0x10000) { o += static_cast<char>(0xe0 | (cp >> 12)); o += static_cast<char>(0x80 | ((cp >> 6) & 0x3f)); o += static_cast<char>(0x80 | (cp & 0x3f)); }
    else { o += static_cast<char>(0xf0 | (cp >> 18)); o += static_cast<char>(0x80 | ((cp >> 12) & 0x3f)); o += static_cast<char>(0x80 | ((cp >> 6) & 0x3f)); o += static_cast<char>(0x80 | (cp & 0x3f)); }
  }
  bool string(std::string& o) {
    if (i >= in.size() || in[i] != '"') return fail("expected a string");
    i++;
    while (i < in.size() && in[i] != '"') {
      char c = in[i++];
      if (static_cast<unsigned char>(c) < 0x20) return fail("control character in a string");
      if (c != '\\') { o += c; continue; }
      if (i >= in.size()) return fail("unterminated escape");
      char e = in[i++];
      switch (e) {
        case '"': o += '"'; break;
        case '\\': o += '\\'; break;
        case '/': o += '/'; break;
        case 'b': o += '\b'; break;
        case 'f': o += '\f'; break;
        case 'n': o += '\n'; break;
        case 'r': o += '\r'; break;
        case 't': o += '\t'; break;
        case 'u': {
          unsigned cp;
          if (!hex4(&cp)) return false;
          if (cp >= 0xd800 && cp < 0xdc00) {
            unsigned lo;
            if (!lit("\\u") || !hex4(&lo) || lo < 0xdc00 || lo > 0xdfff) return fail("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          }
          utf8(o, cp);
          break;
        }
        default: return fail("bad escape");
      }
    }
    if (i >= in.size()) return fail("unterminated string");
    i++;
    return true;
  }
  bool number(Json& v) {
    std::size_t b = i;
    if (i < in.size() && in[i] == '-') i++;
    if (i >= in.size() || !(in[i] >= '0' && in[i] <= '9')) return fail("bad number");
    if (in[i] == '0') i++;
    else while (i < in.size() && in[i] >= '0' && in[i] <= '9') i++;
    bool integer = true;
    if (i < in.size() && in[i] == '.') {
      integer = false;
      i++;
      if (i >= in.size() || !(in[i] >= '0' && in[i] <= '9')) return fail("bad fraction");
      while (i < in.size() && in[i] >= '0' && in[i] <= '9') i++;
    }
    if (i < in.size() && (in[i] == 'e' || in[i] == 'E')) {
      integer = false;
      i++;
      if (i < in.size() && (in[i] == '+' || in[i] == '-')) i++;
      if (i >= in.size() || !(in[i] >= '0' && in[i] <= '9')) return fail("bad exponent");
      while (i < in.size() && in[i] >= '0' && in[i] <= '9') i++;
    }
    std::string t(in.substr(b, i - b));
    v.type = Json::kNum;
    v.num = std::strtod(t.c_str(), nullptr);
    if (integer && t[0] != '-') {
      v.u64 = std::strtoull(t.c_str(), nullptr, 10);
      v.is_uint = true;
    }
    return true;
  }
  bool value(Json& v, int depth) {
    if (depth > 64) return fail("nested too deeply");
    ws();
    if (i >= in.size()) return fail("unexpected end");
    char c = in[i];
    if (c == '{') {
      v.type = Json::kObj;
      i++;
      ws();
      if (i < in.size() && in[i] == '}') { i++; return true; }
      for (;;) {
        ws();
        std::string k;
        if (!string(k)) return false;
        ws();
        if (i >= in.size() || in[i] != ':') return fail("expected ':'");
        i++;
        Json x;
        if (!value(x, depth + 1)) return false;
        v.keys.push_back(std::move(k));
        v.vals.push_back(std::move(x));
        ws();
        if (i < in.size() && in[i] == ',') { i++; continue; }
        if (i < in.size() && in[i] == '}') { i++; return true; }
        return fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type = Json::kArr;
      i++;
      ws();
      if (i < in.size() && in[i] == ']') { i++; return true; }
      for (;;) {
        Json x;
        if (!value(x, depth + 1)) return false;
        v.arr.push_back(std::move(x));
        ws();
        if (i < in.size() && in[i] == ',') { i++; continue; }
        if (i < in.size() && in[i] == ']') { i++; return true; }
        return fail("expected ',' or ']'");
      }
    }
    if (c == '"') { v.type = Json::kStr; return string(v.s); }
    if (c == 't') { v.type = Json::kBool; v.b = true; return lit("true"); }
    if (c == 'f') { v.type = Json::kBool; return lit("false"); }
    if (c == 'n') { v.type = Json::kNull; return lit("null"); }
    return number(v);
  }
};
}  // namespace json_detail

inline absl::StatusOr<Json> json_parse(std::string_view text) {
  json_detail::Parser p{text, 0, {}};
  Json v;
  if (!p.value(v, 0)) return absl::InvalidArgumentError("bad JSON: " + p.err);
  p.ws();
  if (p.i != text.size()) {
    p.fail("trailing characters");
    return absl::InvalidArgumentError("bad JSON: " + p.err);
  }
  return v;
}

}  // namespace kgmp::telemetry
