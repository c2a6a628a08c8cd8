package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// hostLevel is the level the Functions host gives a line the handler wrote
// (WorkerProcess.cs: stdout Information; stderr Warning when the line contains "warn" in
// any case, else Error).
func hostLevel(stream, line string) string {
	if stream == "stdout" {
		return "Information"
	}
	if strings.Contains(strings.ToLower(line), "warn") {
		return "Warning"
	}
	return "Error"
}

func lines(b *bytes.Buffer) []string {
	s := strings.TrimSuffix(b.String(), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// TestLogSeverityAsTheHostSeesIt: each record is one line on the stream whose host level
// matches its own, errors that talk about warnings stay errors, and the JSON still reads
// back as written.
func TestLogSeverityAsTheHostSeesIt(t *testing.T) {
	var stdout, stderr bytes.Buffer
	log := newLogger(&stdout, &stderr, slog.LevelInfo).With("component", "test")
	log.Debug("not shown")
	log.Info("events queued", "count", 3)
	log.Warn("webhook secret refresh failed", "error", errors.New("vault: 503"))
	log.Error("Warning sign: WARNED twice\nsecond line", "error", errors.New("token endpoint: forewarned"), "Warnings", 2)

	out, errLines := lines(&stdout), lines(&stderr)
	if len(out) != 1 || len(errLines) != 2 {
		t.Fatalf("stdout %d lines %q, stderr %d lines %q; want 1 and 2", len(out), out, len(errLines), errLines)
	}
	if got := hostLevel("stdout", out[0]); got != "Information" || !strings.Contains(out[0], "events queued") {
		t.Errorf("info line %q: host level %s", out[0], got)
	}
	if got := hostLevel("stderr", errLines[0]); got != "Warning" {
		t.Errorf("warning line %q: host level %s, want Warning", errLines[0], got)
	}
	if got := hostLevel("stderr", errLines[1]); got != "Error" {
		t.Errorf("error line %q: host level %s, want Error", errLines[1], got)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(errLines[1]), &rec); err != nil {
		t.Fatalf("error line is not JSON: %v: %s", err, errLines[1])
	}
	if rec["msg"] != "Warning sign: WARNED twice\nsecond line" || rec["error"] != "token endpoint: forewarned" || rec["Warnings"] != float64(2) || rec["level"] != "ERROR" || rec["component"] != "test" {
		t.Errorf("error record read back as %v", rec)
	}
}
