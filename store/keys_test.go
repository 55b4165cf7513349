package store

import (
	"encoding/hex"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/zeebo/blake3"

	"github.com/boule-vfs/boule/manifest"
)

func TestChunkKeyGolden(t *testing.T) {
	const want = "3b/3bdeaf8f8e98780b318106aafdc3ca257f73df123d97b69112b26044c91a7d56"
	if got := ChunkKey(manifest.ZeroChunk); got != want {
		t.Fatalf("ChunkKey(ZeroChunk) = %q, want %q", got, want)
	}
	fp, err := ParseChunkKey(want)
	if err != nil || fp != manifest.ZeroChunk {
		t.Fatalf("ParseChunkKey = %v, %v", fp, err)
	}
	for _, bad := range []string{
		"",
		want[3:],
		"3c" + want[2:],
		strings.ToUpper(want),
		"3b%2F" + want[3:],
		want + "0",
	} {
		if _, err := ParseChunkKey(bad); err == nil {
			t.Errorf("ParseChunkKey(%q) succeeded", bad)
		}
	}
}

// The golden keys pin the format of doc/FORMAT.md: changing any of them
// orphans every manifest already stored.
var goldenKeys = []struct {
	host, path, key, prefix string
}{
	{"example.com", "/var/db/app.db",
		"a0e4-example.com/98f2-%2Fvar%2Fdb%2Fapp.db", "a0e4-example.com/"},
	{"test.com", "/tmp/test.db",
		"2933-test.com/1988-%2Ftmp%2Ftest.db", "2933-test.com/"},
	{"host-1", "/data/my db (1).sqlite",
		"305c-host-1/2e37-%2Fdata%2Fmy%20db%20%281%29.sqlite", "305c-host-1/"},
	{"h", "/é/#%?\n",
		"b5b0-h/a326-%2F%C3%A9%2F%23%25%3F%0A", "b5b0-h/"},
	{strings.Repeat("h", 120), "/" + strings.Repeat("p", 250),
		"9bac-hhhhhhhhhhhhhhhhh^eab9dd34134bf359ef182e89bbb10b2d94257e17048fc5c6d14ec533360c03d8^hhhhhhhhhhhhhhhhh/" +
			"0c35-%2F" + strings.Repeat("p", 77) + "^87a305c7ae2c3ba012cd692512927ee804fef3ab4969a86c687774531e336c57^" + strings.Repeat("p", 80),
		"9bac-hhhhhhhhhhhhhhhhh^eab9dd34134bf359ef182e89bbb10b2d94257e17048fc5c6d14ec533360c03d8^hhhhhhhhhhhhhhhhh/"},
}

func TestManifestKeyGolden(t *testing.T) {
	for _, g := range goldenKeys {
		key, err := ManifestKey(g.host, g.path)
		if err != nil {
			t.Fatalf("ManifestKey(%q, %q): %v", g.host, g.path, err)
		}
		if key != g.key {
			t.Errorf("ManifestKey(%q, %q)\n got %q\nwant %q", g.host, g.path, key, g.key)
		}
		hp, err := HostPrefix(g.host)
		if err != nil || hp != g.prefix || !strings.HasPrefix(key, hp) {
			t.Errorf("HostPrefix(%q) = %q, %v; want %q", g.host, hp, err, g.prefix)
		}
		checkKeyInvariants(t, g.host, g.path, key)
	}
}

// TestManifestKeyDerivation recomputes a key from the FORMAT.md recipe
// with the hash library directly.
func TestManifestKeyDerivation(t *testing.T) {
	h := func(s string) string {
		sum := blake3.Sum256([]byte(s))
		return hex.EncodeToString(sum[:])[:4]
	}
	want := h("boule host\x00example.com") + "-example.com/" + h("boule path\x00/var/db/app.db") + "-%2Fvar%2Fdb%2Fapp.db"
	if got, _ := ManifestKey("example.com", "/var/db/app.db"); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestManifestKeyErrors(t *testing.T) {
	for _, c := range []struct{ host, path string }{
		{"", "/a"},
		{"h", ""},
		{"h", "relative/path"},
		{"h", "./a"},
		{"h", "/a\x00b"},
		{"h\x00", "/a"},
	} {
		if k, err := ManifestKey(c.host, c.path); err == nil {
			t.Errorf("ManifestKey(%q, %q) = %q, want an error", c.host, c.path, k)
		}
	}
	if _, err := HostPrefix(""); err == nil {
		t.Error("HostPrefix(\"\") succeeded")
	}
}

func TestManifestKeyHostile(t *testing.T) {
	paths := []string{
		"/",
		"/..",
		"/../../etc/passwd",
		"/.",
		"/a/./b/../c",
		"/with space/and%percent/and#hash?q=1&x",
		"/tab\there/newline\nthere/cr\r",
		"/ünïcödé/日本語/emoji🙂.db",
		"/\xff\xfe invalid utf8",
		"/back\\slash/quote\"/apos'/star*/pipe|/colon:",
		"/" + strings.Repeat("a", 199),
		"/" + strings.Repeat("a", 200),
		"/" + strings.Repeat("%", 66), // encodes to exactly 201 bytes
		"/" + strings.Repeat("/", 4095),
		"/" + strings.Repeat("é", 2000),
	}
	hosts := []string{"h", "..", ".", "a/b", "host name", "ÿ", strings.Repeat("x", 100), strings.Repeat("x", 101), strings.Repeat("€", 255)}
	seen := map[string]string{}
	for _, host := range hosts {
		for _, p := range paths {
			key, err := ManifestKey(host, p)
			if err != nil {
				t.Fatalf("ManifestKey(%q, %q): %v", host, p, err)
			}
			checkKeyInvariants(t, host, p, key)
			id := host + "\x00" + p
			if prev, ok := seen[key]; ok && prev != id {
				t.Errorf("collision: %q and %q both map to %q", prev, id, key)
			}
			seen[key] = id
		}
	}
}

// checkKeyInvariants checks what FORMAT.md promises of every manifest key.
func checkKeyInvariants(t *testing.T, host, path, key string) {
	t.Helper()
	if len(key) > 1024 {
		t.Errorf("key of %d bytes exceeds S3's 1024", len(key))
	}
	if len(key) > 337 {
		t.Errorf("key of %d bytes exceeds the documented 337", len(key))
	}
	if strings.Count(key, "/") != 1 {
		t.Errorf("key %q has %d slashes, want 1", key, strings.Count(key, "/"))
	}
	for _, c := range strings.Split(key, "/") {
		if len(c) > 255 || c == "" || c == "." || c == ".." {
			t.Errorf("bad component %q (%d bytes)", c, len(c))
		}
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			t.Fatalf("key %q has non-printable or non-ASCII byte %#x", key, key[i])
		}
	}
	if !utf8.ValidString(key) {
		t.Errorf("key %q is not UTF-8", key)
	}
	h, p, hashed, err := ParseManifestKey(key)
	if err != nil {
		t.Fatalf("ParseManifestKey(%q): %v", key, err)
	}
	wantHashed := len(percentEncode(host)) > hostLimit || len(percentEncode(path)) > nameLimit
	if hashed != wantHashed {
		t.Errorf("ParseManifestKey(%q): hashed = %v, want %v", key, hashed, wantHashed)
	}
	if len(percentEncode(host)) <= hostLimit && h != host {
		t.Errorf("ParseManifestKey(%q) host = %q, want %q", key, h, host)
	}
	if len(percentEncode(path)) <= nameLimit && p != path {
		t.Errorf("ParseManifestKey(%q) path = %q, want %q", key, p, path)
	}
	hp, _ := HostPrefix(host)
	if !strings.HasPrefix(key, hp) {
		t.Errorf("key %q does not start with HostPrefix %q", key, hp)
	}
}

func TestShortenedLengths(t *testing.T) {
	key, err := ManifestKey(strings.Repeat("€", 255), "/"+strings.Repeat("é", 2000))
	if err != nil {
		t.Fatal(err)
	}
	host, name, _ := strings.Cut(key, "/")
	if len(host) != 5+hostLimit || len(name) != 5+2*nameKeep+66 {
		t.Errorf("shortened components of %d and %d bytes, want %d and %d", len(host), len(name), 5+hostLimit, 5+2*nameKeep+66)
	}
	// At the limit, nothing is shortened.
	p := "/" + strings.Repeat("a", nameLimit-3) // "%2F" + 197 bytes = 200
	key, _ = ManifestKey("h", p)
	if _, got, hashed, _ := ParseManifestKey(key); hashed || got != p {
		t.Errorf("a 200-byte name was shortened")
	}
}

func TestParseManifestKeyRejects(t *testing.T) {
	good, _ := ManifestKey("example.com", "/var/db/app.db")
	for _, bad := range []string{
		"",
		"nokey",
		good + "/extra",
		"/" + good,
		strings.Replace(good, "a0e4", "a0e5", 1), // wrong host hash
		strings.Replace(good, "98f2", "98F2", 1), // uppercase hash
		strings.Replace(good, "%2Fvar", "%2fvar", 1),             // lowercase escape
		strings.Replace(good, "%2Fvar", "/var", 1),               // raw slash
		strings.Replace(good, "app.db", "app%2Edb", 1),           // needless escape
		strings.Replace(good, "app.db", "app db", 1),             // raw space
		strings.Replace(good, "app.db", "app.db%0", 1),           // truncated escape
		strings.Replace(good, "%2Fvar%2Fdb%2Fapp.db", "var", 1),  // not absolute (and wrong hash)
		"a0e4-example.com/98f2-" + strings.Repeat("p", 201),      // too long unshortened
		"a0e4-example.com/98f2-" + strings.Repeat("p", 80) + "^", // malformed shortened
		"a0e4-example.com/98f2-%00",
		"a0e4-..",
		"a0e4-example.com/..",
	} {
		if _, _, _, err := ParseManifestKey(bad); err == nil {
			t.Errorf("ParseManifestKey(%q) succeeded", bad)
		}
	}
}

func FuzzManifestKey(f *testing.F) {
	for _, g := range goldenKeys {
		f.Add(g.host, g.path)
	}
	f.Add("..", "/..")
	f.Add("a/b", "/%2F")
	f.Add(strings.Repeat("%", 40), "/"+strings.Repeat("\n", 100))
	f.Fuzz(func(t *testing.T, host, path string) {
		key, err := ManifestKey(host, path)
		if err != nil {
			if host != "" && path != "" && path[0] == '/' && !strings.Contains(host+path, "\x00") {
				t.Fatalf("ManifestKey(%q, %q) rejected valid input: %v", host, path, err)
			}
			return
		}
		checkKeyInvariants(t, host, path, key)
		again, _ := ManifestKey(host, path)
		if again != key {
			t.Fatalf("not deterministic: %q then %q", key, again)
		}
	})
}
