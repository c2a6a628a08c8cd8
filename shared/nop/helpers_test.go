package nop_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// remove, as a mutation value, deletes the field.
type removeT struct{}

var remove = removeT{}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mutate sets path (like "data.items[0].quantity") in the JSON document to v
// (json.RawMessage is inserted as is; remove deletes the field).
func mutate(t testing.TB, doc []byte, path string, v any) []byte {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var root any
	if err := dec.Decode(&root); err != nil {
		t.Fatal(err)
	}
	steps := splitPath(path)
	cur := root
	for i, s := range steps {
		last := i == len(steps)-1
		switch c := cur.(type) {
		case map[string]any:
			if last {
				if v == remove {
					delete(c, s)
				} else {
					c[s] = v
				}
				break
			}
			cur = c[s]
		case []any:
			n, err := strconv.Atoi(s)
			if err != nil || n >= len(c) {
				t.Fatalf("bad path %q at %q", path, s)
			}
			if last {
				c[n] = v
				break
			}
			cur = c[n]
		default:
			t.Fatalf("bad path %q at %q", path, s)
		}
	}
	out, err := json.Marshal(root)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func splitPath(p string) []string {
	var out []string
	for _, part := range strings.Split(p, ".") {
		name, idx, ok := strings.Cut(part, "[")
		out = append(out, name)
		for ok {
			var n string
			n, idx, _ = strings.Cut(idx, "]")
			out = append(out, n)
			_, idx, ok = strings.Cut(idx, "[")
		}
	}
	return out
}

// examplesDir finds the repository's examples folder, two levels above this package.
func examplesDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test file")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..", "examples")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("examples not found at %s (expected examples/ at the repository root): %v", dir, err)
	}
	return dir
}
