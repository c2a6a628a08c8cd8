// Command packager builds the deployable zip of the Functions app: host.json at the root,
// one folder per function with its function.json, and the linux/amd64 custom-handler
// executable "handler" with its executable bit set (zips made elsewhere lose it and the
// host cannot start the handler). Run it through scripts/package.
package main

import (
	"archive/zip"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	root := flag.String("root", ".", "repository root")
	binary := flag.String("handler", "dist/handler", "the built linux/amd64 handler executable")
	out := flag.String("out", "dist/app.zip", "zip to write")
	flag.Parse()
	if err := build(*root, *binary, *out); err != nil {
		fmt.Fprintln(os.Stderr, "package:", err)
		os.Exit(1)
	}
	fmt.Println(*out)
}

func build(root, binary, out string) error {
	entries := map[string]string{ // name in zip -> file on disk
		"host.json": filepath.Join(root, "host.json"),
		"handler":   binary,
	}
	fns, err := filepath.Glob(filepath.Join(root, "functions", "*", "function.json"))
	if err != nil {
		return err
	}
	if len(fns) == 0 {
		return fmt.Errorf("no functions/*/function.json under %s", root)
	}
	for _, f := range fns {
		name := filepath.Base(filepath.Dir(f))
		entries[name+"/function.json"] = f
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	zw := zip.NewWriter(f)
	for _, n := range names {
		if err := add(zw, n, entries[n]); err != nil {
			f.Close()
			os.Remove(tmp)
			return err
		}
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func add(zw *zip.Writer, name, path string) error {
	src, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	h, err := zip.FileInfoHeader(st)
	if err != nil {
		return err
	}
	h.Name = name
	h.Method = zip.Deflate
	mode := fs.FileMode(0o644)
	if name == "handler" || strings.HasSuffix(name, "/handler") {
		mode = 0o755
	}
	h.SetMode(mode)
	w, err := zw.CreateHeader(h)
	if err != nil {
		return err
	}
	_, err = io.Copy(w, src)
	return err
}
