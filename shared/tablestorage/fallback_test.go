package tablestorage

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/nopsync/nopsync/shared/state"
)

// stripETags removes the ETag headers from $batch answers, as a service that does not
// send them would.
type stripETags struct{}

var etagLine = regexp.MustCompile(`(?mi)^ETag:.*\r?\n`)

func (stripETags) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	if err != nil || !strings.HasSuffix(req.Raw().URL.Path, "$batch") {
		return resp, err
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(etagLine.ReplaceAll(b, nil)))
	return resp, nil
}

// TestSaveWithoutBatchETags: when the $batch answer does not give the new versions, Save
// reads the record back and hands out its real ETag, and the counter is re-read.
func TestSaveWithoutBatchETags(t *testing.T) {
	s := newTestStore(t, Options{ClientOptions: &aztables.ClientOptions{ClientOptions: policy.ClientOptions{
		PerRetryPolicies: []policy.Policy{stripETags{}},
	}}})
	ctx := context.Background()
	r := &state.Record{Entity: state.Order, ID: "5", Status: state.Pending}
	for _, st := range []state.Status{state.Pending, state.Failed, state.Synced} {
		r.Status = st
		if err := s.Save(ctx, r); err != nil {
			t.Fatalf("save %s: %v", st, err)
		}
		got, err := s.Get(ctx, state.Order, "5")
		if err != nil {
			t.Fatal(err)
		}
		if got.ETag != r.ETag {
			t.Fatalf("after save %s: rec.ETag %q, stored %q", st, r.ETag, got.ETag)
		}
	}
	c, err := s.Counts(ctx)
	if err != nil || c[state.Order][state.Synced] != 1 || c[state.Order][state.Pending] != 0 || c[state.Order][state.Failed] != 0 {
		t.Fatalf("counts %v, %v", c, err)
	}
}
