package spool

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLayoutSpelledOnlyHere: no Go file of the module outside spool/
// spells a name of the spool's layout (layout.go): they go through Dir
// and DB, so that the layout can change in one place. Struct tags and
// comments are not code; names too common to tell apart ("ready",
// "uploaded", "packed", "targets", "source", "chunks", "manifest", "tmp")
// are checked only as parts of a path.
func TestLayoutSpelledOnlyHere(t *testing.T) {
	exact := map[string]bool{}
	for _, n := range []string{stagingDir, consumingDir, markerFile, statusFile, beatFile, uploadLock, LockFile} {
		exact[n] = true
	}
	parts := map[string]bool{}
	for _, n := range []string{stagingDir, readyDir, consumingDir, uploadedFile, packedFile, targetsFile, baseFile} {
		parts[n] = true
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	err = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if e.IsDir() {
			if rel == "spool" || strings.HasPrefix(e.Name(), ".") || e.Name() == "testdata" || e.Name() == "build" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		checked++
		tags := map[*ast.BasicLit]bool{}
		ast.Inspect(f, func(n ast.Node) bool {
			if fl, ok := n.(*ast.Field); ok && fl.Tag != nil {
				tags[fl.Tag] = true
			}
			return true
		})
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING || tags[lit] {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			bad := exact[s]
			if strings.Contains(s, "/") {
				for _, c := range strings.Split(s, "/") {
					bad = bad || parts[c]
				}
			}
			if bad {
				t.Errorf("%s: %s names a spool path: use package spool's Dir or DB", fset.Position(lit.Pos()), lit.Value)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("checked %d Go files, want the whole module", checked)
	}
}
