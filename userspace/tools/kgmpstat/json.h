// json.h — the small, strict JSON value, parser and writer kgmpstat needs.
//
// Why our own: kgmpstat reads one short line per request (the scx_stats protocol) and writes
// three kinds of document (the snapshot, Chrome trace events, test fixtures); a few hundred
// lines cover that without a new build dependency, and strictness is the point: a parser that
// accepts what Perfetto or Python's json module would reject would hide bugs in the tests.
//
// Parsing follows RFC 8259 and nothing more: no comments, no trailing commas, no leading zeros,
// no NaN/Infinity, no control characters in strings, \u escapes (with surrogate pairs) decoded
// to UTF-8, nothing but whitespace after the value, nesting limited to kMaxDepth.
//
// Numbers: a number written without fraction or exponent that fits an int64 is kept exactly
// (counters, ns timestamps above 2^53 stay exact); any other number is a double. Objects keep
// their members in input order (the writer prints them in that order); a duplicate key is an
// error.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace kgmpstat::json {

inline constexpr int kMaxDepth = 64;

class Value {
 public:
  enum class Type { kNull, kBool, kInt, kDouble, kString, kArray, kObject };
  using Array = std::vector<Value>;
  using Object = std::vector<std::pair<std::string, Value>>;

  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool b) : v_(b) {}
  Value(int v) : v_(std::int64_t{v}) {}
  Value(long v) : v_(std::int64_t{v}) {}
  Value(long long v) : v_(std::int64_t{v}) {}
  Value(unsigned v) : v_(std::int64_t{v}) {}
  Value(unsigned long v) : v_(static_cast<std::int64_t>(v)) {}
  Value(unsigned long long v) : v_(static_cast<std::int64_t>(v)) {}
  Value(double v) : v_(v) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(std::string_view s) : v_(std::string(s)) {}
  static Value array() { Value v; v.v_ = Array{}; return v; }
  static Value object() { Value v; v.v_ = Object{}; return v; }

  Type type() const { return static_cast<Type>(v_.index()); }
  bool is_null() const { return type() == Type::kNull; }
  bool is_bool() const { return type() == Type::kBool; }
  bool is_number() const { return type() == Type::kInt || type() == Type::kDouble; }
  bool is_int() const { return type() == Type::kInt; }
  bool is_string() const { return type() == Type::kString; }
  bool is_array() const { return type() == Type::kArray; }
  bool is_object() const { return type() == Type::kObject; }

  bool as_bool() const { return is_bool() && std::get<bool>(v_); }
  // A number as an int64 (a double is truncated); def for anything else.
  std::int64_t as_int(std::int64_t def = 0) const;
  double as_double(double def = 0) const;
  const std::string& as_string() const;  // "" unless a string
  const Array& items() const;            // empty unless an array
  const Object& members() const;         // empty unless an object
  Array& mutable_items();                // turns a non-array into an empty array first

  // Object access: the member's value, or nullptr (also when this is not an object).
  const Value* find(std::string_view key) const;
  // Convenience: member `key` as a number/string, def when absent or of another type.
  std::int64_t get_int(std::string_view key, std::int64_t def = 0) const;
  double get_double(std::string_view key, double def = 0) const;
  std::string get_string(std::string_view key, std::string_view def = "") const;

  // Building. push/set turn a null value into an array/object first.
  Value& push(Value v);
  Value& set(std::string key, Value v);  // replaces an existing member

 private:
  // One alternative per Type, in Type's order (type() is the index). 40 bytes: large traces
  // hold millions of these.
  std::variant<std::monostate, bool, std::int64_t, double, std::string, Array, Object> v_;
};

absl::StatusOr<Value> Parse(std::string_view text);

// Compact (one line, no spaces) or pretty (two-space indent, one member per line).
std::string Write(const Value& v, bool pretty = false);
// A JSON string literal for s (quotes and escapes included).
std::string Quote(std::string_view s);

}  // namespace kgmpstat::json
