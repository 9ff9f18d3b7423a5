// json.cpp — the strict RFC 8259 parser (recursive descent over a string_view, depth-limited)
// and the writer. See json.h for the rules.
#include "kgmpstat/json.h"

#include <charconv>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kgmpstat::json {

namespace {
const std::string kEmptyString;
const Value::Array kEmptyArray;
const Value::Object kEmptyObject;
}  // namespace

std::int64_t Value::as_int(std::int64_t def) const {
  if (const auto* i = std::get_if<std::int64_t>(&v_)) return *i;
  if (const auto* d = std::get_if<double>(&v_); d != nullptr && std::isfinite(*d) &&
                                                 std::fabs(*d) < 9.2e18)
    return static_cast<std::int64_t>(*d);
  return def;
}
double Value::as_double(double def) const {
  if (const auto* i = std::get_if<std::int64_t>(&v_)) return static_cast<double>(*i);
  if (const auto* d = std::get_if<double>(&v_)) return *d;
  return def;
}
const std::string& Value::as_string() const {
  const auto* s = std::get_if<std::string>(&v_);
  return s != nullptr ? *s : kEmptyString;
}
const Value::Array& Value::items() const {
  const auto* a = std::get_if<Array>(&v_);
  return a != nullptr ? *a : kEmptyArray;
}
Value::Array& Value::mutable_items() {
  if (!is_array()) v_ = Array{};
  return std::get<Array>(v_);
}
const Value::Object& Value::members() const {
  const auto* o = std::get_if<Object>(&v_);
  return o != nullptr ? *o : kEmptyObject;
}

const Value* Value::find(std::string_view key) const {
  const auto* o = std::get_if<Object>(&v_);
  if (o == nullptr) return nullptr;
  for (const auto& [k, v] : *o)
    if (k == key) return &v;
  return nullptr;
}
std::int64_t Value::get_int(std::string_view key, std::int64_t def) const {
  const Value* v = find(key);
  return v != nullptr && v->is_number() ? v->as_int(def) : def;
}
double Value::get_double(std::string_view key, double def) const {
  const Value* v = find(key);
  return v != nullptr && v->is_number() ? v->as_double(def) : def;
}
std::string Value::get_string(std::string_view key, std::string_view def) const {
  const Value* v = find(key);
  return v != nullptr && v->is_string() ? v->as_string() : std::string(def);
}
Value& Value::push(Value v) {
  if (is_null()) v_ = Array{};
  Array& a = std::get<Array>(v_);
  a.push_back(std::move(v));
  return a.back();
}
Value& Value::set(std::string key, Value v) {
  if (is_null()) v_ = Object{};
  Object& o = std::get<Object>(v_);
  for (auto& [k, old] : o)
    if (k == key) return old = std::move(v);
  o.emplace_back(std::move(key), std::move(v));
  return o.back().second;
}

// ---- parser ----

namespace {

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  absl::StatusOr<Value> ParseDocument() {
    Value v;
    if (!ParseValue(v, 0)) return Error();
    SkipWs();
    if (pos_ != s_.size()) {
      err_ = "unexpected text after the value";
      return Error();
    }
    return v;
  }

 private:
  absl::Status Error() const {
    return absl::InvalidArgumentError(absl::StrFormat("JSON: %s at byte %d", err_, pos_));
  }
  bool Fail(const char* what) {
    err_ = what;
    return false;
  }
  void SkipWs() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      pos_++;
  }
  bool Literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return Fail("invalid literal");
    pos_ += word.size();
    return true;
  }

  bool ParseValue(Value& out, int depth) {
    if (depth > kMaxDepth) return Fail("nesting too deep");
    SkipWs();
    if (pos_ >= s_.size()) return Fail("unexpected end of input");
    switch (s_[pos_]) {
      case 'n': out = Value(); return Literal("null");
      case 't': out = Value(true); return Literal("true");
      case 'f': out = Value(false); return Literal("false");
      case '"': {
        std::string str;
        if (!ParseString(str)) return false;
        out = Value(std::move(str));
        return true;
      }
      case '[': return ParseArray(out, depth);
      case '{': return ParseObject(out, depth);
      default: return ParseNumber(out);
    }
  }

  bool ParseArray(Value& out, int depth) {
    pos_++;  // '['
    out = Value::array();
    SkipWs();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      pos_++;
      return true;
    }
    for (;;) {
      Value item;
      if (!ParseValue(item, depth + 1)) return false;
      out.push(std::move(item));
      SkipWs();
      if (pos_ >= s_.size()) return Fail("unterminated array");
      if (s_[pos_] == ',') {
        pos_++;
        continue;
      }
      if (s_[pos_] == ']') {
        pos_++;
        return true;
      }
      return Fail("expected ',' or ']'");
    }
  }

  bool ParseObject(Value& out, int depth) {
    pos_++;  // '{'
    out = Value::object();
    SkipWs();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      pos_++;
      return true;
    }
    for (;;) {
      SkipWs();
      if (pos_ >= s_.size() || s_[pos_] != '"') return Fail("expected a member name");
      std::string key;
      if (!ParseString(key)) return false;
      if (out.find(key) != nullptr) return Fail("duplicate member name");
      SkipWs();
      if (pos_ >= s_.size() || s_[pos_] != ':') return Fail("expected ':'");
      pos_++;
      Value v;
      if (!ParseValue(v, depth + 1)) return false;
      out.set(std::move(key), std::move(v));
      SkipWs();
      if (pos_ >= s_.size()) return Fail("unterminated object");
      if (s_[pos_] == ',') {
        pos_++;
        continue;
      }
      if (s_[pos_] == '}') {
        pos_++;
        return true;
      }
      return Fail("expected ',' or '}'");
    }
  }

  bool Hex4(unsigned& cp) {
    if (pos_ + 4 > s_.size()) return Fail("short \\u escape");
    cp = 0;
    for (int i = 0; i < 4; i++) {
      char c = s_[pos_++];
      cp <<= 4;
      if (c >= '0' && c <= '9') cp |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') cp |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') cp |= static_cast<unsigned>(c - 'A' + 10);
      else return Fail("bad hex digit in \\u escape");
    }
    return true;
  }

  static void AppendUtf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  bool ParseString(std::string& out) {
    pos_++;  // '"'
    for (;;) {
      if (pos_ >= s_.size()) return Fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[pos_++]);
      if (c == '"') return true;
      if (c < 0x20) return Fail("control character in string");
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (pos_ >= s_.size()) return Fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp;
          if (!Hex4(cp)) return false;
          if (cp >= 0xD800 && cp < 0xDC00) {
            unsigned lo;
            if (s_.substr(pos_, 2) != "\\u") return Fail("lone high surrogate");
            pos_ += 2;
            if (!Hex4(lo)) return false;
            if (lo < 0xDC00 || lo >= 0xE000) return Fail("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            return Fail("lone low surrogate");
          }
          AppendUtf8(out, cp);
          break;
        }
        default: return Fail("bad escape");
      }
    }
  }

  bool ParseNumber(Value& out) {
    const size_t start = pos_;
    bool integral = true;
    if (pos_ < s_.size() && s_[pos_] == '-') pos_++;
    if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') return Fail("unexpected character");
    if (s_[pos_] == '0') {
      pos_++;
      if (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') return Fail("leading zero");
    } else {
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') pos_++;
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      integral = false;
      pos_++;
      if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') return Fail("digit expected");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') pos_++;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integral = false;
      pos_++;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) pos_++;
      if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') return Fail("digit expected");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') pos_++;
    }
    const char* b = s_.data() + start;
    const char* e = s_.data() + pos_;
    if (integral) {
      std::int64_t i;
      auto [p, ec] = std::from_chars(b, e, i);
      if (ec == std::errc() && p == e) {
        out = Value(static_cast<long long>(i));
        return true;
      }
    }
    double d;
    auto [p, ec] = std::from_chars(b, e, d);
    if (ec != std::errc() || p != e || !std::isfinite(d)) return Fail("number out of range");
    out = Value(d);
    return true;
  }

  std::string_view s_;
  size_t pos_ = 0;
  const char* err_ = "";
};

void WriteTo(std::string& out, const Value& v, bool pretty, int indent) {
  auto newline = [&](int ind) {
    if (!pretty) return;
    out += '\n';
    out.append(static_cast<size_t>(ind) * 2, ' ');
  };
  switch (v.type()) {
    case Value::Type::kNull: out += "null"; return;
    case Value::Type::kBool: out += v.as_bool() ? "true" : "false"; return;
    case Value::Type::kInt: absl::StrAppend(&out, v.as_int()); return;
    case Value::Type::kDouble: {
      double d = v.as_double();
      if (!std::isfinite(d)) {  // JSON has no NaN/Inf; never emit one
        out += "null";
        return;
      }
      char buf[64];
      auto [p, ec] = std::to_chars(buf, buf + sizeof buf, d);
      out.append(buf, p);
      return;
    }
    case Value::Type::kString: out += Quote(v.as_string()); return;
    case Value::Type::kArray: {
      const auto& a = v.items();
      out += '[';
      for (size_t i = 0; i < a.size(); i++) {
        if (i > 0) out += ',';
        newline(indent + 1);
        WriteTo(out, a[i], pretty, indent + 1);
      }
      if (!a.empty()) newline(indent);
      out += ']';
      return;
    }
    case Value::Type::kObject: {
      const auto& o = v.members();
      out += '{';
      for (size_t i = 0; i < o.size(); i++) {
        if (i > 0) out += ',';
        newline(indent + 1);
        out += Quote(o[i].first);
        out += pretty ? ": " : ":";
        WriteTo(out, o[i].second, pretty, indent + 1);
      }
      if (!o.empty()) newline(indent);
      out += '}';
      return;
    }
  }
}

}  // namespace

absl::StatusOr<Value> Parse(std::string_view text) { return Parser(text).ParseDocument(); }

std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) out += absl::StrFormat("\\u%04x", c);
        else out += static_cast<char>(c);
    }
  }
  out += '"';
  return out;
}

std::string Write(const Value& v, bool pretty) {
  std::string out;
  WriteTo(out, v, pretty, 0);
  return out;
}

}  // namespace kgmpstat::json
