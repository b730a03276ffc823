// Chat templates are Jinja; this renders the part of Jinja that Hugging Face's chat templates use,
// with HF's settings (trim_blocks, lstrip_blocks): text, {{ expressions }}, {% if / elif / else %},
// {% for x in xs %} with `loop`, {% set %}, {# comments #}, whitespace control with '-'; literals,
// variables, attributes and subscripts (slices too), + - * / % ~, comparisons, in, and/or/not,
// `x if c else y`, `is (not) defined/none/string`, filters (trim, length, upper, lower, first, last,
// default, tojson), string methods (strip, lstrip, rstrip, upper, lower, startswith, endswith) and
// raise_exception(). Anything else is an ApiError 400 naming it, never a wrong prompt. Values are JSON
// values (nlohmann::json); a discarded value stands for Jinja's undefined.
#include "server/chat_template.h"

#include <cctype>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace mamba::server {

namespace {

using Value = nlohmann::json;

[[noreturn]] void unsupported(const std::string& what) {
  throw ApiError(400, "the model's chat template uses " + what + ", which this server does not render", "messages",
                 "chat_template_unsupported");
}

Value undefined() { return Value(Value::value_t::discarded); }
bool is_undefined(const Value& v) { return v.is_discarded(); }

bool truthy(const Value& v) {
  if (is_undefined(v) || v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer()) return v.get<int64_t>() != 0;
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get<std::string>().empty();
  return !v.empty();
}

std::string to_text(const Value& v) {
  if (is_undefined(v) || v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  return v.dump();
}

// ---- expressions ----

struct Token {
  enum Kind { Name, String, Number, Op, End } kind;
  std::string text;
};

std::vector<Token> lex(const std::string& s) {
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      i++;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) j++;
      out.push_back({Token::Name, s.substr(i, j - i)});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '.')) j++;
      out.push_back({Token::Number, s.substr(i, j - i)});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string text;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; j++) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          text += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
          text += s[j];
        }
      }
      if (j >= s.size()) unsupported("an unterminated string");
      out.push_back({Token::String, text});
      i = j + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">="};
      std::string op(1, c);
      for (const char* t : two) {
        if (s.compare(i, 2, t) == 0) op = t;
      }
      if (std::string("+-*/%~<>()[]{}.,:|=!").find(c) == std::string::npos) unsupported(std::string("'") + c + "'");
      out.push_back({Token::Op, op});
      i += op.size();
    }
  }
  out.push_back({Token::End, ""});
  return out;
}

using Scope = std::map<std::string, Value>;
using Expr = std::function<Value(const Scope&)>;

// A recursive-descent parser from tokens to closures.
class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Expr expression() {
    Expr value = logical_or();
    if (is_name("if")) {
      pos_++;
      Expr cond = logical_or();
      Expr otherwise = [](const Scope&) { return Value(""); };
      if (is_name("else")) {
        pos_++;
        otherwise = expression();
      }
      return [=](const Scope& s) { return truthy(cond(s)) ? value(s) : otherwise(s); };
    }
    return value;
  }
  bool done() const { return t_[pos_].kind == Token::End; }
  bool is_name(const char* n) const { return t_[pos_].kind == Token::Name && t_[pos_].text == n; }
  bool is_op(const char* o) const { return t_[pos_].kind == Token::Op && t_[pos_].text == o; }
  std::string name() {
    if (t_[pos_].kind != Token::Name) unsupported("\"" + t_[pos_].text + "\" where a name should be");
    return t_[pos_++].text;
  }
  void expect(const char* o) {
    if (!is_op(o)) unsupported(std::string("a missing '") + o + "'");
    pos_++;
  }

 private:
  Expr logical_or() {
    Expr l = logical_and();
    while (is_name("or")) {
      pos_++;
      Expr r = logical_and();
      l = [=](const Scope& s) { return Value(truthy(l(s)) || truthy(r(s))); };
    }
    return l;
  }
  Expr logical_and() {
    Expr l = logical_not();
    while (is_name("and")) {
      pos_++;
      Expr r = logical_not();
      l = [=](const Scope& s) { return Value(truthy(l(s)) && truthy(r(s))); };
    }
    return l;
  }
  Expr logical_not() {
    if (is_name("not")) {
      pos_++;
      Expr e = logical_not();
      return [=](const Scope& s) { return Value(!truthy(e(s))); };
    }
    return comparison();
  }
  Expr comparison() {
    Expr l = concat();
    for (;;) {
      if (is_name("is")) {
        pos_++;
        const bool negate = is_name("not") ? (pos_++, true) : false;
        const std::string test = name();
        std::function<bool(const Value&)> f;
        if (test == "defined") f = [](const Value& v) { return !is_undefined(v); };
        else if (test == "undefined") f = [](const Value& v) { return is_undefined(v); };
        else if (test == "none") f = [](const Value& v) { return v.is_null(); };
        else if (test == "string") f = [](const Value& v) { return v.is_string(); };
        else if (test == "number") f = [](const Value& v) { return v.is_number(); };
        else if (test == "mapping") f = [](const Value& v) { return v.is_object(); };
        else if (test == "iterable" || test == "sequence") f = [](const Value& v) { return v.is_array() || v.is_string(); };
        else unsupported("the test \"is " + test + "\"");
        l = [=](const Scope& s) { return Value(f(l(s)) != negate); };
        continue;
      }
      const bool not_in = is_name("not") && t_[pos_ + 1].kind == Token::Name && t_[pos_ + 1].text == "in";
      if (is_name("in") || not_in) {
        pos_ += not_in ? 2 : 1;
        Expr r = concat();
        l = [=](const Scope& s) {
          const Value a = l(s), b = r(s);
          bool found = false;
          if (b.is_string() && a.is_string()) found = b.get<std::string>().find(a.get<std::string>()) != std::string::npos;
          else if (b.is_array()) found = std::find(b.begin(), b.end(), a) != b.end();
          else if (b.is_object() && a.is_string()) found = b.contains(a.get<std::string>());
          return Value(found != not_in);
        };
        continue;
      }
      static const char* ops[] = {"==", "!=", "<", ">", "<=", ">="};
      const char* op = nullptr;
      for (const char* o : ops) {
        if (is_op(o)) op = o;
      }
      if (!op) return l;
      pos_++;
      Expr r = concat();
      const std::string o = op;
      l = [=](const Scope& s) {
        const Value a = l(s), b = r(s);
        if (o == "==") return Value(a == b);
        if (o == "!=") return Value(a != b);
        if (o == "<") return Value(a < b);
        if (o == ">") return Value(a > b);
        if (o == "<=") return Value(a <= b);
        return Value(a >= b);
      };
    }
  }
  Expr concat() {
    Expr l = additive();
    while (is_op("~")) {
      pos_++;
      Expr r = additive();
      l = [=](const Scope& s) { return Value(to_text(l(s)) + to_text(r(s))); };
    }
    return l;
  }
  Expr additive() {
    Expr l = multiplicative();
    while (is_op("+") || is_op("-")) {
      const bool plus = t_[pos_++].text == "+";
      Expr r = multiplicative();
      l = [=](const Scope& s) {
        const Value a = l(s), b = r(s);
        if (plus && (a.is_string() || b.is_string())) {
          if (!a.is_string() || !b.is_string()) unsupported("'+' of a string and another type");
          return Value(a.get<std::string>() + b.get<std::string>());
        }
        if (plus && a.is_array() && b.is_array()) {
          Value out = a;
          for (const Value& x : b) out.push_back(x);
          return out;
        }
        if (!a.is_number_integer() || !b.is_number_integer()) unsupported("arithmetic on values that are not integers");
        return Value(plus ? a.get<int64_t>() + b.get<int64_t>() : a.get<int64_t>() - b.get<int64_t>());
      };
    }
    return l;
  }
  Expr multiplicative() {
    Expr l = unary();
    while (is_op("*") || is_op("/") || is_op("%")) {
      const char op = t_[pos_++].text[0];
      Expr r = unary();
      l = [=](const Scope& s) {
        const Value a = l(s), b = r(s);
        if (!a.is_number_integer() || !b.is_number_integer()) unsupported("arithmetic on values that are not integers");
        const int64_t x = a.get<int64_t>(), y = b.get<int64_t>();
        if (op != '*' && y == 0) unsupported("a division by zero");
        return Value(op == '*' ? x * y : op == '/' ? x / y : ((x % y) + y) % y);
      };
    }
    return l;
  }
  Expr unary() {
    if (is_op("-")) {
      pos_++;
      Expr e = unary();
      return [=](const Scope& s) {
        const Value v = e(s);
        if (!v.is_number_integer()) unsupported("'-' of a value that is not an integer");
        return Value(-v.get<int64_t>());
      };
    }
    return postfix(primary());
  }
  std::vector<Expr> arguments() {
    std::vector<Expr> args;
    expect("(");
    while (!is_op(")")) {
      args.push_back(expression());
      if (!is_op(")")) expect(",");
    }
    pos_++;
    return args;
  }
  Expr postfix(Expr e) {
    for (;;) {
      if (is_op(".")) {
        pos_++;
        const std::string attr = name();
        if (is_op("(")) {
          e = method(e, attr, arguments());
        } else {
          e = [=](const Scope& s) {
            const Value v = e(s);
            return v.is_object() && v.contains(attr) ? v[attr] : undefined();
          };
        }
      } else if (is_op("[")) {
        pos_++;
        Expr lo = is_op(":") ? Expr() : expression();
        if (is_op(":")) {  // a slice [lo:hi]
          pos_++;
          Expr hi = is_op("]") ? Expr() : expression();
          expect("]");
          e = [=](const Scope& s) {
            const Value v = e(s);
            if (!v.is_array()) unsupported("a slice of a value that is not a list");
            const auto n = static_cast<int64_t>(v.size());
            auto bound = [&](const Expr& x, int64_t otherwise) {
              if (!x) return otherwise;
              int64_t b = x(s).get<int64_t>();
              if (b < 0) b += n;
              return std::clamp<int64_t>(b, 0, n);
            };
            Value out = Value::array();
            for (int64_t i = bound(lo, 0); i < bound(hi, n); i++) out.push_back(v[static_cast<size_t>(i)]);
            return out;
          };
        } else {
          expect("]");
          e = [=](const Scope& s) {
            const Value v = e(s), k = lo(s);
            if (v.is_object() && k.is_string()) return v.contains(k.get<std::string>()) ? v[k.get<std::string>()] : undefined();
            if (v.is_array() && k.is_number_integer()) {
              int64_t i = k.get<int64_t>();
              if (i < 0) i += static_cast<int64_t>(v.size());
              return i >= 0 && i < static_cast<int64_t>(v.size()) ? v[static_cast<size_t>(i)] : undefined();
            }
            return undefined();
          };
        }
      } else if (is_op("|")) {
        pos_++;
        e = filter(e, name());
      } else {
        return e;
      }
    }
  }
  Expr method(Expr e, const std::string& m, std::vector<Expr> args) {
    return [=](const Scope& s) {
      const Value v = e(s);
      if (!v.is_string()) unsupported("the method ." + m + "() of a value that is not a string");
      std::string x = v.get<std::string>();
      auto arg = [&](size_t i) { return i < args.size() ? to_text(args[i](s)) : std::string(); };
      const char* space = " \t\n\r\f\v";
      if (m == "strip" || m == "lstrip" || m == "rstrip") {
        if (m != "rstrip") x.erase(0, x.find_first_not_of(space) == std::string::npos ? x.size() : x.find_first_not_of(space));
        if (m != "lstrip") x.erase(x.find_last_not_of(space) + 1);
        return Value(x);
      }
      if (m == "upper" || m == "lower") {
        for (char& c : x) c = static_cast<char>(m == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
        return Value(x);
      }
      if (m == "startswith") return Value(x.rfind(arg(0), 0) == 0);
      if (m == "endswith") {
        const std::string a = arg(0);
        return Value(x.size() >= a.size() && x.compare(x.size() - a.size(), a.size(), a) == 0);
      }
      unsupported("the method ." + m + "()");
    };
  }
  Expr filter(Expr e, const std::string& f) {
    std::vector<Expr> args;
    if (is_op("(")) args = arguments();
    if (f == "trim") return method(e, "strip", {});
    if (f == "upper" || f == "lower") return method(e, f, {});
    return [=](const Scope& s) {
      const Value v = e(s);
      if (f == "length" || f == "count") return Value(v.is_string() ? v.get<std::string>().size() : v.size());
      if (f == "first" || f == "last") return v.empty() ? undefined() : f == "first" ? v.front() : v.back();
      if (f == "default") return is_undefined(v) && !args.empty() ? args[0](s) : v;
      if (f == "tojson") return Value(v.dump());
      if (f == "string") return Value(to_text(v));
      unsupported("the filter |" + f);
    };
  }
  Expr primary() {
    const Token t = t_[pos_++];
    switch (t.kind) {
      case Token::String: return [v = Value(t.text)](const Scope&) { return v; };
      case Token::Number: {
        if (t.text.find('.') != std::string::npos) unsupported("a non-integer number");
        return [v = Value(std::stoll(t.text))](const Scope&) { return v; };
      }
      case Token::Name: {
        if (t.text == "true" || t.text == "True") return [](const Scope&) { return Value(true); };
        if (t.text == "false" || t.text == "False") return [](const Scope&) { return Value(false); };
        if (t.text == "none" || t.text == "None") return [](const Scope&) { return Value(nullptr); };
        if (t.text == "raise_exception") {
          std::vector<Expr> args = arguments();
          return [=](const Scope& s) -> Value {
            throw ApiError(400, "the chat template refused these messages: " + (args.empty() ? "" : to_text(args[0](s))),
                           "messages");
          };
        }
        if (is_op("(")) unsupported("the function " + t.text + "()");
        return [n = t.text](const Scope& s) {
          auto it = s.find(n);
          return it == s.end() ? undefined() : it->second;
        };
      }
      case Token::Op:
        if (t.text == "(") {
          Expr e = expression();
          expect(")");
          return e;
        }
        if (t.text == "[") {
          std::vector<Expr> items;
          while (!is_op("]")) {
            items.push_back(expression());
            if (!is_op("]")) expect(",");
          }
          pos_++;
          return [=](const Scope& s) {
            Value out = Value::array();
            for (const Expr& x : items) out.push_back(x(s));
            return out;
          };
        }
        break;
      case Token::End: break;
    }
    unsupported("\"" + t.text + "\" in an expression");
  }

  std::vector<Token> t_;
  size_t pos_ = 0;
};

Expr parse_expression(const std::string& source) {
  Parser p(lex(source));
  Expr e = p.expression();
  if (!p.done()) unsupported("the expression \"" + source + "\"");
  return e;
}

// ---- statements ----

struct Node {
  enum Kind { Text, Output, If, For, Set } kind = Text;
  std::string text;                                  // Text
  Expr expr;                                         // Output; Set's value; For's list
  std::vector<std::pair<Expr, std::vector<Node>>> branches;  // If: (condition, body)...; else: a null condition
  std::string var;                                   // For, Set
  std::vector<Node> body;                            // For
};

struct Tag {
  enum Kind { Text, Output, Statement } kind;
  std::string text;
};

// The template cut into text and tags, with HF's trim_blocks (the newline after a block tag goes) and
// lstrip_blocks (spaces from a line's start to a block tag go), and '-' stripping whitespace.
std::vector<Tag> split(const std::string& src) {
  std::vector<Tag> tags;
  const char* space = " \t\r\n";
  bool strip_next = false, block_before = false;
  for (size_t i = 0;;) {
    size_t at = i;
    for (;; at++) {
      at = src.find('{', at);
      if (at == std::string::npos || at + 1 >= src.size()) {
        at = std::string::npos;
        break;
      }
      if (src[at + 1] == '{' || src[at + 1] == '%' || src[at + 1] == '#') break;
    }
    std::string text = src.substr(i, at == std::string::npos ? std::string::npos : at - i);
    if (strip_next) {
      const size_t keep = text.find_first_not_of(space);
      text.erase(0, keep == std::string::npos ? text.size() : keep);
    } else if (block_before && !text.empty() && text[0] == '\n') {
      text.erase(0, 1);
    }
    if (at == std::string::npos) {
      tags.push_back({Tag::Text, text});
      return tags;
    }
    const char kind = src[at + 1];
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    const size_t end = src.find(close, at + 2);
    if (end == std::string::npos) unsupported("an unclosed tag");
    std::string inner = src.substr(at + 2, end - at - 2);
    const bool strip_before = !inner.empty() && inner[0] == '-';
    strip_next = !inner.empty() && inner.back() == '-';
    if (strip_before) inner.erase(0, 1);
    if (strip_next && !inner.empty()) inner.pop_back();
    if (strip_before) {
      text.erase(text.find_last_not_of(space) + 1);
    } else if (kind != '{') {  // lstrip_blocks, judged on the source: only spaces from the line's start
      const size_t newline = at == 0 ? std::string::npos : src.rfind('\n', at - 1);
      const size_t line = newline == std::string::npos ? 0 : newline + 1;
      if (line >= i && src.find_first_not_of(" \t", line) >= at) text.erase(text.size() - std::min(text.size(), at - line));
    }
    tags.push_back({Tag::Text, text});
    if (kind == '{') tags.push_back({Tag::Output, inner});
    if (kind == '%') tags.push_back({Tag::Statement, inner});
    block_before = kind != '{';
    i = end + 2;
  }
}

std::string first_word(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\n");
  if (b == std::string::npos) return "";
  const size_t e = s.find_first_of(" \t\n", b);
  return s.substr(b, e == std::string::npos ? std::string::npos : e - b);
}

std::string after_word(const std::string& s) {
  const std::string w = first_word(s);
  return s.substr(s.find(w) + w.size());
}

// Parses tags[at...] into nodes until one of `ends` (a statement's first word); returns that word.
std::string parse_nodes(const std::vector<Tag>& tags, size_t& at, std::vector<Node>& out, std::vector<std::string> ends) {
  while (at < tags.size()) {
    const Tag& t = tags[at++];
    if (t.kind == Tag::Text) {
      if (!t.text.empty()) out.push_back(Node{Node::Text, t.text, {}, {}, {}, {}});
      continue;
    }
    if (t.kind == Tag::Output) {
      out.push_back(Node{Node::Output, {}, parse_expression(t.text), {}, {}, {}});
      continue;
    }
    const std::string word = first_word(t.text), rest = after_word(t.text);
    if (std::find(ends.begin(), ends.end(), word) != ends.end()) {
      at--;  // the caller reads the closing tag
      return word;
    }
    if (word == "if") {
      Node n;
      n.kind = Node::If;
      Expr cond = parse_expression(rest);
      for (;;) {
        std::vector<Node> body;
        const std::string end = parse_nodes(tags, at, body, {"elif", "else", "endif"});
        if (end.empty()) unsupported("an {% if %} without {% endif %}");
        n.branches.emplace_back(cond, std::move(body));
        const Tag& closing = tags[at++];
        if (end == "endif") break;
        cond = end == "elif" ? parse_expression(after_word(closing.text)) : Expr();
      }
      out.push_back(std::move(n));
    } else if (word == "for") {
      Parser p(lex(rest));
      Node n;
      n.kind = Node::For;
      n.var = p.name();
      if (!p.is_name("in")) unsupported("a {% for %} over several names");
      const size_t in = rest.find(" in ");
      n.expr = parse_expression(rest.substr(in + 4));
      if (parse_nodes(tags, at, n.body, {"endfor", "else"}) != "endfor") unsupported("{% for %} without {% endfor %}, or with {% else %}");
      at++;
      out.push_back(std::move(n));
    } else if (word == "set") {
      const size_t eq = rest.find('=');
      if (eq == std::string::npos) unsupported("a {% set %} block");
      Node n;
      n.kind = Node::Set;
      n.var = first_word(rest.substr(0, eq));
      if (n.var.find('.') != std::string::npos) unsupported("{% set " + n.var + " %} (namespaces)");
      n.expr = parse_expression(rest.substr(eq + 1));
      out.push_back(std::move(n));
    } else {
      unsupported("{% " + word + " %}");
    }
  }
  return "";
}

void render_nodes(const std::vector<Node>& nodes, Scope& scope, std::string& out) {
  for (const Node& n : nodes) {
    switch (n.kind) {
      case Node::Text: out += n.text; break;
      case Node::Output: out += to_text(n.expr(scope)); break;
      case Node::Set: scope[n.var] = n.expr(scope); break;
      case Node::If:
        for (const auto& [cond, body] : n.branches) {
          if (!cond || truthy(cond(scope))) {
            render_nodes(body, scope, out);
            break;
          }
        }
        break;
      case Node::For: {
        const Value list = n.expr(scope);
        if (!list.is_array()) unsupported("a {% for %} over a value that is not a list");
        const Value outer_loop = scope.count("loop") ? scope["loop"] : undefined();
        const Value outer_var = scope.count(n.var) ? scope[n.var] : undefined();
        for (size_t i = 0; i < list.size(); i++) {
          scope[n.var] = list[i];
          scope["loop"] = Value{{"index", i + 1}, {"index0", i}, {"first", i == 0}, {"last", i + 1 == list.size()},
                                {"length", list.size()}};
          render_nodes(n.body, scope, out);
        }
        // Jinja's for has its own scope: the names it set are gone after it.
        if (is_undefined(outer_var)) scope.erase(n.var); else scope[n.var] = outer_var;
        if (is_undefined(outer_loop)) scope.erase("loop"); else scope["loop"] = outer_loop;
        break;
      }
    }
  }
}

std::string read(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A special token as tokenizer_config.json writes it: a string, or {"content": ...}.
std::string special_token(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return {};
}

}  // namespace

std::optional<ChatTemplate> ChatTemplate::find(const std::filesystem::path& dir) {
  std::string bos, eos, source;
  const auto config_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    const nlohmann::json config = nlohmann::json::parse(read(config_path), nullptr, false);
    if (config.is_discarded()) fail(config_path.string(), ": not valid JSON");
    bos = special_token(config, "bos_token");
    eos = special_token(config, "eos_token");
    if (auto it = config.find("chat_template"); it != config.end()) {
      if (it->is_string()) {
        source = it->get<std::string>();
      } else if (it->is_array()) {  // named templates: [{"name": "default", "template": ...}, ...]
        for (const auto& t : *it) {
          if (t.value("name", "") == "default" && t.contains("template") && t["template"].is_string()) {
            source = t["template"].get<std::string>();
          }
        }
      }
    }
  }
  if (source.empty() && std::filesystem::exists(dir / "chat_template.jinja")) source = read(dir / "chat_template.jinja");
  if (source.empty()) return std::nullopt;
  return ChatTemplate(std::move(source), std::move(bos), std::move(eos));
}

ChatTemplate::ChatTemplate(std::string source, std::string bos, std::string eos)
    : source_(std::move(source)), bos_(std::move(bos)), eos_(std::move(eos)) {}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages) const {
  const std::vector<Tag> tags = split(source_);
  std::vector<Node> nodes;
  size_t at = 0;
  if (!parse_nodes(tags, at, nodes, {}).empty()) unsupported("a closing tag without its opening one");
  Scope scope;
  Value list = Value::array();
  for (const ChatMessage& m : messages) list.push_back(Value{{"role", m.role}, {"content", m.content}});
  scope["messages"] = list;
  scope["bos_token"] = bos_;
  scope["eos_token"] = eos_;
  scope["add_generation_prompt"] = true;
  std::string out;
  render_nodes(nodes, scope, out);
  return out;
}

}  // namespace mamba::server
