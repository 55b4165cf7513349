package spool

import (
	"strings"
	"testing"
)

// checkName checks the properties every mangled name must have.
func checkName(t *testing.T, path, name string) {
	t.Helper()
	if len(name) == 0 || len(name) > 255 {
		t.Errorf("MangleName(%q) is %d bytes, want 1 to 255", path, len(name))
	}
	if strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		t.Errorf("MangleName(%q)=%q is not a single path component", path, name)
	}
}

func TestMangleRoundTrip(t *testing.T) {
	tests := []struct {
		name, path string
	}{
		{"root", "/"},
		{"plain", "/var/lib/app/data.db"},
		{"hash", "/a#b/#c#"},
		{"percent", "/a%2Fb/%25/%"},
		{"spaces", "/my documents/a b.db"},
		{"unicode", "/données/日本語/🙂.db"},
		{"control characters", "/a\x01b\tc\nd\x7f\x1b"},
		{"invalid UTF-8", "/\xff\xfe/\xc3"},
		{"caret", "/a^b^0123"},
		{"dots", "/./../a/.."},
		{"trailing slash", "/a/b/"},
		{"double slash", "//a//b"},
		{"safe punctuation", "/a.b_c-d+e,f=g@h~i"},
		{"other punctuation", "/!\"$&'()*:;<>?[\\]`{|}"},
		{"longest short", "/" + strings.Repeat("x", 199)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := MangleName(tt.path)
			checkName(t, tt.path, name)
			got, ok := UnmangleName(name)
			if !ok || got != tt.path {
				t.Errorf("UnmangleName(MangleName(%q))=%q, %v; want %q, true", tt.path, got, ok, tt.path)
			}
		})
	}
}

func TestMangleNoCollisions(t *testing.T) {
	paths := []string{
		"/a/b", "/a#b", "/a%2Fb", "/a%2fb", "/a%23b", "/a%252Fb", "/a%25b",
		"/a b", "/a%20b", "/a+b", "/a^b", "/a%5Eb", "/A/b", "/a/b/", "//a/b",
		"/a/b\x00"[:5], "/ab", "/a.b", "/a\\b", "/a%b", "/a##b", "/a//b",
	}
	long := func(mid string) string {
		return "/" + strings.Repeat("p", 2000) + mid + strings.Repeat("s", 1990)
	}
	paths = append(paths, long("x"), long("y"), long("/"), long("#"), long("%23"),
		"/"+strings.Repeat("x", 199), "/"+strings.Repeat("x", 200), "/"+strings.Repeat("x", 201))
	seen := make(map[string]string)
	for _, p := range paths {
		name := MangleName(p)
		checkName(t, p, name)
		if q, dup := seen[name]; dup && q != p {
			t.Errorf("MangleName(%q)=MangleName(%q)=%q", p, q, name)
		}
		seen[name] = p
	}
}

func TestMangleLongPaths(t *testing.T) {
	base := "/" + strings.Repeat("d/", 1999) + "f" // 4000 bytes
	if len(base) != 4000 {
		t.Fatalf("len(base)=%d", len(base))
	}
	variants := []string{base}
	for _, c := range []byte{'e', '#', '%', ' ', 0xff} {
		b := []byte(base)
		b[2001] = c // the middle, far from both kept ends
		variants = append(variants, string(b))
	}
	seen := make(map[string]bool)
	for _, p := range variants {
		name := MangleName(p)
		checkName(t, p[:10]+"…", name)
		if seen[name] {
			t.Errorf("two 4000-byte paths differing in the middle share the name %q", name)
		}
		seen[name] = true
		if _, ok := UnmangleName(name); ok {
			t.Errorf("UnmangleName(hashed name) reports ok, want false")
		}
		if MangleName(p) != name {
			t.Errorf("MangleName is not deterministic")
		}
	}
	// The boundary between the two forms.
	for n := 195; n <= 205; n++ {
		p := "/" + strings.Repeat("x", n-1)
		name := MangleName(p)
		checkName(t, p, name)
		got, ok := UnmangleName(name)
		if short := len(p) <= 200; ok != short || (ok && got != p) {
			t.Errorf("UnmangleName(MangleName(%d-byte path))=%v, want ok=%v and the path", n, ok, short)
		}
	}
}

func FuzzMangle(f *testing.F) {
	for _, s := range []string{
		"/", "/a/b", "/a#b", "/a%2Fb", "/a^b", "/é", "/\x01\x7f\xff",
		"/" + strings.Repeat("%", 70), "/" + strings.Repeat("ab/", 90),
		"/" + strings.Repeat("x", 199), "/" + strings.Repeat("x", 200),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		// Past a few hundred bytes every name is hashed; longer inputs
		// (up to PATH_MAX, 4096, in TestMangleLongPaths) only make the
		// fuzzer slow to minimize.
		if !strings.HasPrefix(path, "/") || strings.ContainsRune(path, 0) || len(path) > 1024 {
			t.Skip()
		}
		name := MangleName(path)
		checkName(t, path, name)
		got, ok := UnmangleName(name)
		if ok && got != path {
			t.Errorf("UnmangleName(MangleName(%q))=%q, want the path", path, got)
		}
		if !ok && len(name) <= 200 {
			t.Errorf("UnmangleName(%q) of a short name reports false", name)
		}
	})
}
