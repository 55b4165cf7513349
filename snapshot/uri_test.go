package snapshot

import (
	"errors"
	"strings"
	"testing"
)

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Source
		bad  string // substring of the error; empty means valid
	}{
		{name: "boule://h.example/data/app.db", want: Source{Hostname: "h.example", Path: "/data/app.db"}},
		{name: "boule:///data/app.db", want: Source{Path: "/data/app.db"}},
		{name: "verneuil://h.example/data/app.db", want: Source{Hostname: "h.example", Path: "/data/app.db"}},
		{name: "verneuil:///data/app.db", want: Source{Path: "/data/app.db"}},
		{name: "verneuil://h", bad: "no path"},
		{name: "verneuil://h/a/../b", bad: "not a clean"},
		{name: "/var/tmp/saved.manifest", want: Source{ManifestFile: "/var/tmp/saved.manifest"}},
		{name: "relative.manifest", want: Source{ManifestFile: "relative.manifest"}},
		{name: "", bad: "empty"},
		{name: "boule://h", bad: "no path"},
		{name: "boule://h/", bad: "not a clean"},
		{name: "boule://h/a/../b", bad: "not a clean"},
		{name: "boule://h/a/./b", bad: "not a clean"},
		{name: "boule://h/a//b", bad: "not a clean"},
		{name: "boule://h/a/", bad: "not a clean"},
		{name: "boule://../a", bad: "host name"},
		{name: "boule://h\\x/a", bad: "host name"},
		{name: "boule://h/a\x00b", bad: "control character"},
		{name: "boule://h/a\nb", bad: "control character"},
		{name: "boule://h/\xff", bad: "UTF-8"},
		{name: "boule://" + strings.Repeat("h", 256) + "/a", bad: "more than 255"},
		{name: "boule://h/" + strings.Repeat("a", 4096), bad: "more than 4096"},
		{name: strings.Repeat("m", 5000), bad: "more than 4096"},
	} {
		got, err := ParseName(tc.name)
		if tc.bad == "" {
			if err != nil || got != tc.want {
				t.Errorf("ParseName(%q)=%+v, %v; want %+v", tc.name, got, err, tc.want)
			}
			if canon := strings.Replace(tc.name, VerneuilScheme, Scheme, 1); got.String() != canon {
				t.Errorf("ParseName(%q).String()=%q, want %q", tc.name, got.String(), canon)
			}
			continue
		}
		if !errors.Is(err, ErrBadName) || !strings.Contains(err.Error(), tc.bad) {
			t.Errorf("ParseName(%q)=%+v, %v; want an error about %q", shorten(tc.name), got, err, tc.bad)
		}
	}
}

func shorten(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// FuzzParseName: a name either fails with ErrBadName or yields a source
// whose host and path are safe to put in keys and file names, and that
// prints back as the same name.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{"boule://h/a.db", "boule:///a/b", "/m", "boule://h/../a", "boule://h/a%00", "boule://\x00/", "boule:////", "verneuil://h/a.db"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		src, err := ParseName(name)
		if err != nil {
			if !errors.Is(err, ErrBadName) {
				t.Fatalf("ParseName(%q): %v does not wrap ErrBadName", name, err)
			}
			return
		}
		// Verneuil's scheme prints back as Boule's.
		want := name
		if rest, ok := strings.CutPrefix(name, VerneuilScheme); ok {
			want = Scheme + rest
		}
		if src.String() != want {
			t.Fatalf("ParseName(%q).String()=%q, want %q", name, src.String(), want)
		}
		if src.ManifestFile != "" {
			return
		}
		if strings.Contains(src.Path, "/../") || strings.HasSuffix(src.Path, "/..") || strings.ContainsAny(src.Path+src.Hostname, "\x00\n") {
			t.Fatalf("ParseName(%q) accepted a hostile path: %+v", name, src)
		}
		if CheckPath(src.Path) != nil || CheckHostname(src.Hostname) != nil {
			t.Fatalf("ParseName(%q)=%+v fails its own checks", name, src)
		}
	})
}
