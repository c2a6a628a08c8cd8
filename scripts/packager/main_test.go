package main

import (
	"archive/zip"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// TestZipLayout checks what the Functions host needs from the package: host.json at the
// root, one folder per function, and an executable handler.
func TestZipLayout(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "handler")
	if err := os.WriteFile(bin, []byte("#!fake"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "app.zip")
	if err := build("../..", bin, out); err != nil {
		t.Fatal(err)
	}
	zr, err := zip.OpenReader(out)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	got := map[string]os.FileMode{}
	for _, f := range zr.File {
		got[f.Name] = f.Mode()
	}
	fns, _ := filepath.Glob("../../functions/*/function.json")
	want := []string{"host.json", "handler"}
	for _, f := range fns {
		want = append(want, filepath.Base(filepath.Dir(f))+"/function.json")
	}
	sort.Strings(want)
	if len(got) != len(want) {
		t.Errorf("zip has %d entries, want %d: %v", len(got), len(want), got)
	}
	for _, w := range want {
		if _, ok := got[w]; !ok {
			t.Errorf("zip lacks %s", w)
		}
	}
	if got["handler"]&0o111 == 0 {
		t.Errorf("handler mode %v: executable bit missing", got["handler"])
	}
	if got["host.json"]&0o111 != 0 {
		t.Errorf("host.json should not be executable: %v", got["host.json"])
	}
}
