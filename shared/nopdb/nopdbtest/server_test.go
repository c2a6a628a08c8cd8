package nopdbtest

import (
	"testing"
)

// recorder stands in for a testing.TB to see whether ServerConn skips or fails.
type recorder struct {
	testing.TB
	skipped, failed bool
}

func (r *recorder) Helper()             {}
func (r *recorder) Skip(...any)         { r.skipped = true }
func (r *recorder) Fatal(...any)        { r.failed = true }
func (r *recorder) Logf(string, ...any) {}

// TestServerConnFailsInCI: without a test server, a run with CI=true fails, a local run
// skips.
func TestServerConnFailsInCI(t *testing.T) {
	t.Setenv(EnvPostgres, "")
	t.Setenv("CI", "true")
	r := &recorder{}
	ServerConn(r, PostgreSQL)
	if !r.failed || r.skipped {
		t.Errorf("CI=true without a server: failed=%v skipped=%v", r.failed, r.skipped)
	}
	t.Setenv("CI", "")
	r = &recorder{}
	ServerConn(r, PostgreSQL)
	if r.failed || !r.skipped {
		t.Errorf("local run without a server: failed=%v skipped=%v", r.failed, r.skipped)
	}
}
