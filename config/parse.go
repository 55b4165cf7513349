package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// maxDepth bounds the nesting of arrays and objects in a configuration.
// A valid configuration nests four levels deep at most.
const maxDepth = 64

// Top-level keys, in the order in which they are decoded and written.
var topKeys = []string{
	"make_default",
	"tempdir",
	"replication_spooling_dir",
	"replication_spooling_dir_permissions",
	"replication_targets",
	"snapshot_loading_policy",
	"max_requests_per_second",
	"pack_chunks",
	"replica_memory_limit",
	"replica_max_mapped_chunks",
	"capture_memory_mib",
	"manifest_pace_ms",
}

// targetKinds lists the kinds of replication targets in the order used
// in messages.
var targetKinds = []string{kindS3, kindDir, kindLocal, kindReadOnly}

// Load parses value, the value of the [EnvVar] environment variable (as
// [FromEnv] returns it).
//
// An empty or all-whitespace value yields the zero Config and a nil
// error, so that setting the variable to "" is the same as unsetting
// it. A value that starts with "@" names a file, read in full, that
// holds the JSON configuration; errors then name the file. Any other
// value is the JSON configuration itself, parsed with [Parse].
func Load(value string) (Config, error) {
	if strings.TrimSpace(value) == "" {
		return Config{}, nil
	}
	path, ok := strings.CutPrefix(value, "@")
	if !ok {
		c, err := Parse([]byte(value))
		var e *Error
		if err != nil && !strings.HasPrefix(strings.TrimSpace(value), "{") && errors.As(err, &e) {
			// Not JSON: likely a path that lacks its "@".
			e.Msg += fmt.Sprintf(`; a configuration file is given as "@" and its path: @%s`, strings.TrimSpace(value))
		}
		return c, err
	}
	if path == "" {
		return Config{}, &Error{Msg: `"@" must be followed by the path of a configuration file`}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, &fileError{path: path, err: err}
	}
	c, err := Parse(data)
	if err != nil {
		return Config{}, &fileError{path: path, err: err}
	}
	return c, nil
}

// Parse parses a JSON configuration strictly and validates it with
// [Config.Validate].
//
// data must hold exactly one JSON object, optionally surrounded by
// white space. Unknown keys, duplicate keys and values of the wrong
// JSON type are errors that name the key. A null value for an optional
// key stands for its zero value; a null value for a required key is an
// error. On error Parse returns the zero Config and an [*Error].
func Parse(data []byte) (Config, error) {
	if err := checkSyntax(data); err != nil {
		return Config{}, err
	}
	c, err := decodeConfig(bytes.TrimSpace(data))
	if err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// UnmarshalJSON parses data with [Parse], so that json.Unmarshal into a
// Config is as strict as Parse. It keeps c's Logger, and leaves c
// unchanged when data is null or on error.
func (c *Config) UnmarshalJSON(data []byte) error {
	if string(bytes.TrimSpace(data)) == "null" {
		return nil
	}
	parsed, err := Parse(data)
	if err != nil {
		return err
	}
	parsed.Logger = c.Logger
	*c = parsed
	return nil
}

// frame is one open array or object during the syntax check.
type frame struct {
	path      string              // path of the array or object
	object    bool                // object rather than array
	keys      map[string]struct{} // keys seen so far, for objects
	key       string              // last key read, for objects
	expectKey bool                // the next token is a key
	index     int                 // index of the next element, for arrays
}

// checkSyntax walks the tokens of data and reports syntax errors, a
// top level that is not an object, duplicate keys, excessive nesting
// and trailing data. Once it succeeds, data can be decoded with
// encoding/json without losing information.
func checkSyntax(data []byte) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return &Error{Msg: "no JSON value: want a JSON object"}
	}
	// Unmarshal checks the whole input, trailing data included, and
	// reports the absolute offset of the first syntax error.
	var whole json.RawMessage
	if err := json.Unmarshal(data, &whole); err != nil {
		return syntaxError(data, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // Token must not fail on numbers beyond float64.
	tok, err := dec.Token()
	if err != nil {
		return syntaxError(nil, err)
	}
	if tok != json.Delim('{') {
		return &Error{Msg: "the top level must be a JSON object, got " + tokenType(tok)}
	}
	stack := []frame{{object: true, keys: map[string]struct{}{}, expectKey: true}}
	for len(stack) > 0 {
		tok, err := dec.Token()
		if err != nil {
			return syntaxError(nil, err)
		}
		top := &stack[len(stack)-1]
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			continue
		}
		if top.object && top.expectKey {
			key, ok := tok.(string)
			if !ok { // The decoder rejects this first; be safe anyway.
				return &Error{Key: top.path, Msg: "object key is not a string"}
			}
			if _, dup := top.keys[key]; dup {
				return keyError(top.path, "duplicate key %q", key)
			}
			top.keys[key] = struct{}{}
			top.key = key
			top.expectKey = false
			continue
		}
		var path string
		if top.object {
			path = joinKey(top.path, top.key)
			top.expectKey = true
		} else {
			path = joinIndex(top.path, top.index)
			top.index++
		}
		if d, ok := tok.(json.Delim); ok {
			if len(stack) >= maxDepth {
				return &Error{Key: path, Msg: fmt.Sprintf("JSON nested more than %d levels deep", maxDepth)}
			}
			f := frame{path: path, object: d == '{', expectKey: true}
			if f.object {
				f.keys = map[string]struct{}{}
			}
			stack = append(stack, f)
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &Error{Msg: "trailing data after the top-level object"}
	}
	return nil
}

// syntaxError converts an error from encoding/json to an *Error. When
// data is not nil and err is a *json.SyntaxError, whose Offset then
// counts from the start of data, the message gives the line and column
// of the offending byte.
func syntaxError(data []byte, err error) error {
	var se *json.SyntaxError
	switch {
	case data != nil && errors.As(err, &se) && strings.HasPrefix(se.Error(), "unexpected end"):
		return &Error{Msg: "invalid JSON: unexpected end of input"}
	case data != nil && errors.As(err, &se) && strings.HasSuffix(se.Error(), "after top-level value"):
		line, col := position(data, se.Offset-1)
		return &Error{Msg: fmt.Sprintf("trailing data after the top-level object at line %d, column %d", line, col)}
	case data != nil && errors.As(err, &se):
		line, col := position(data, se.Offset-1)
		return &Error{Msg: fmt.Sprintf("invalid JSON at line %d, column %d: %v", line, col, se)}
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		return &Error{Msg: "invalid JSON: unexpected end of input"}
	}
	return &Error{Msg: "invalid JSON: " + err.Error()}
}

// position returns the 1-based line and column of the byte at offset
// off in data.
func position(data []byte, off int64) (line, col int) {
	off = min(max(off, 0), int64(len(data)))
	before := data[:off]
	line = 1 + bytes.Count(before, []byte{'\n'})
	col = 1 + len(before) - (bytes.LastIndexByte(before, '\n') + 1)
	return line, col
}

// tokenType names the JSON type of a token from json.Decoder.Token.
func tokenType(tok json.Token) string {
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			return "array"
		}
		return "object"
	case string:
		return "string"
	case json.Number, float64:
		return "number"
	case bool:
		return "boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", tok)
}

// jsonType names the JSON type of a raw value known to be well-formed.
func jsonType(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// isSimpleKey reports whether key can appear in a path without quotes.
func isSimpleKey(key string) bool {
	if key == "" {
		return false
	}
	for _, r := range key {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// joinKey returns the path of key in the object at path.
func joinKey(path, key string) string {
	switch {
	case !isSimpleKey(key):
		return path + "[" + strconv.Quote(key) + "]"
	case path == "":
		return key
	}
	return path + "." + key
}

// joinIndex returns the path of element i of the array at path.
func joinIndex(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// keyError reports a problem with a key of the object at path.
func keyError(path, format string, args ...any) *Error {
	msg := fmt.Sprintf(format, args...)
	if path == "" {
		msg += " (top level)"
	}
	return &Error{Key: path, Msg: msg}
}

// typeError reports a value at path that is not of the wanted type.
func typeError(path, want string, raw json.RawMessage) *Error {
	return &Error{Key: path, Msg: "expected " + want + ", got " + jsonType(raw)}
}

// object is a decoded JSON object whose values are still raw.
type object struct {
	path string
	m    map[string]json.RawMessage
}

// decodeObject decodes raw, which must be a JSON object, at path.
func decodeObject(raw json.RawMessage, path string) (*object, error) {
	if jsonType(raw) != "object" {
		return nil, typeError(path, "an object", raw)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, &Error{Key: path, Msg: "invalid JSON: " + err.Error()}
	}
	return &object{path: path, m: m}, nil
}

// decodeStrict decodes raw, which must be a JSON object with no key but
// those known, at path.
func decodeStrict(raw json.RawMessage, path string, known ...string) (*object, error) {
	o, err := decodeObject(raw, path)
	if err != nil {
		return nil, err
	}
	if err := o.allow(known...); err != nil {
		return nil, err
	}
	return o, nil
}

// sortedKeys returns the object's keys in sorted order.
func (o *object) sortedKeys() []string {
	keys := make([]string, 0, len(o.m))
	for k := range o.m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// allow reports the first unknown key, in sorted order.
func (o *object) allow(known ...string) error {
	for _, k := range o.sortedKeys() {
		if !slices.Contains(known, k) {
			return keyError(o.path, "unknown key %q", k)
		}
	}
	return nil
}

// get returns the raw value of key and whether it is present. A missing
// required key is an error. A null optional value counts as absent; a
// null required value is returned, to be reported by the type check.
func (o *object) get(key string, required bool) (json.RawMessage, bool, error) {
	raw, ok := o.m[key]
	if !ok {
		if required {
			return nil, false, keyError(o.path, "missing required key %q", key)
		}
		return nil, false, nil
	}
	if !required && jsonType(raw) == "null" {
		return nil, false, nil
	}
	return raw, true, nil
}

// str decodes a string value.
func (o *object) str(key string, required bool) (string, error) {
	raw, ok, err := o.get(key, required)
	if !ok || err != nil {
		return "", err
	}
	path := joinKey(o.path, key)
	if jsonType(raw) != "string" {
		return "", typeError(path, "a string", raw)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", &Error{Key: path, Msg: "invalid string: " + err.Error()}
	}
	return s, nil
}

// boolean decodes a boolean value.
func (o *object) boolean(key string, required bool) (bool, error) {
	raw, ok, err := o.get(key, required)
	if !ok || err != nil {
		return false, err
	}
	if jsonType(raw) != "boolean" {
		return false, typeError(joinKey(o.path, key), "a boolean", raw)
	}
	return raw[0] == 't', nil
}

// number returns the raw JSON number at key, or false when key is absent.
// A value that is not a number is an error saying it should be want.
func (o *object) number(key, want string) (json.RawMessage, bool, error) {
	raw, ok, _ := o.get(key, false)
	if !ok {
		return nil, false, nil
	}
	if jsonType(raw) != "number" {
		return nil, false, typeError(key, want, raw)
	}
	return raw, true, nil
}

// shardedDir returns the "directory" of a local or read-only target, and
// its "num_shards" count (required or not), which fits 32 bits.
func (o *object) shardedDir(shardsRequired bool) (string, uint32, error) {
	dir, err := o.str("directory", true)
	if err != nil {
		return "", 0, err
	}
	n, err := o.uint("num_shards", shardsRequired, math.MaxUint32)
	return dir, uint32(n), err
}

// uint decodes a non-negative integer no greater than limit.
func (o *object) uint(key string, required bool, limit uint64) (uint64, error) {
	raw, ok, err := o.get(key, required)
	if !ok || err != nil {
		return 0, err
	}
	path := joinKey(o.path, key)
	if jsonType(raw) != "number" {
		return 0, typeError(path, "a number", raw)
	}
	v, msg := parseUint(string(raw), limit)
	if msg != "" {
		return 0, &Error{Key: path, Msg: msg}
	}
	return v, nil
}

// parseUint parses a JSON number that must denote an integer in
// [0, limit]. It accepts any spelling of such an integer, including
// fractions and exponents like 4.48e2, and -0. It returns a message
// instead of the value when the number is out of bounds.
func parseUint(num string, limit uint64) (uint64, string) {
	s := num
	negative := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	intPart, s := s[:i], s[i:]
	var frac string
	if strings.HasPrefix(s, ".") {
		j := 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		frac, s = s[1:j], s[j:]
	}
	exp := 0
	hugeExp := 0 // sign of an exponent too large to represent
	if len(s) > 0 && (s[0] == 'e' || s[0] == 'E') {
		e, err := strconv.Atoi(s[1:])
		switch {
		case err != nil || e > 1e6 || e < -1e6:
			hugeExp = 1
			if s[1] == '-' {
				hugeExp = -1
			}
		default:
			exp = e
		}
	} else if s != "" {
		return 0, fmt.Sprintf("invalid number %s", num)
	}

	digits := strings.TrimLeft(intPart+frac, "0")
	if digits == "" {
		return 0, "" // Zero, however written.
	}
	tooLarge := fmt.Sprintf("%s is too large (the maximum is %d)", num, limit)
	switch {
	case negative:
		return 0, fmt.Sprintf("expected a non-negative integer, got %s", num)
	case hugeExp < 0:
		return 0, fmt.Sprintf("expected an integer, got %s", num)
	case hugeExp > 0:
		return 0, tooLarge
	}
	exp -= len(frac)
	for strings.HasSuffix(digits, "0") {
		digits = digits[:len(digits)-1]
		exp++
	}
	if exp < 0 {
		return 0, fmt.Sprintf("expected an integer, got %s", num)
	}
	if len(digits)+exp > 20 {
		return 0, tooLarge
	}
	v, err := strconv.ParseUint(digits+strings.Repeat("0", exp), 10, 64)
	if err != nil || v > limit {
		return 0, tooLarge
	}
	return v, ""
}
