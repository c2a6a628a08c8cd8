package tablestorage

import (
	"context"
	"net/http"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
)

// TestBatchAnswer pins what saveCounted relies on: the captured $batch answer gives each
// operation's new ETag on success, and the failed operation's status and index on failure.
func TestBatchAnswer(t *testing.T) {
	s := newTestStore(t, Options{})
	ctx := context.Background()
	row := func(rk string) []byte {
		b, err := counterEntity("customer", rk, nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	submit := func(ops ...aztables.TransactionAction) ([]opResult, error) {
		c := &capture{}
		_, err := s.c.SubmitTransaction(context.WithValue(ctx, captureKey{}, c), ops, nil)
		res, perr := parseBatch(c)
		if perr != nil {
			t.Fatalf("parse batch answer: %v (submit error %v)", perr, err)
		}
		return res, err
	}
	res, err := submit(
		aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: row("a")},
		aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: row("b")},
	)
	if err != nil || len(res) != 2 {
		t.Fatalf("batch of 2 adds: %v, %+v", err, res)
	}
	for i, rk := range []string{"a", "b"} {
		got, err := s.c.GetEntity(ctx, "customer", rk, nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(got.ETag) != res[i].etag {
			t.Fatalf("op %d: batch said ETag %q, row has %q", i, res[i].etag, got.ETag)
		}
	}
	stale := azcore.ETag(`W/"datetime'2001-01-01T00%3A00%3A00.0000000Z'"`)
	good := azcore.ETag(res[0].etag)
	for _, tc := range []struct {
		name string
		ops  []aztables.TransactionAction
		idx  int
		code int
	}{
		{"second stale", []aztables.TransactionAction{
			{ActionType: aztables.TransactionTypeUpdateReplace, Entity: row("a"), IfMatch: &good},
			{ActionType: aztables.TransactionTypeUpdateReplace, Entity: row("b"), IfMatch: &stale},
		}, 1, http.StatusPreconditionFailed},
		{"first exists", []aztables.TransactionAction{
			{ActionType: aztables.TransactionTypeAdd, Entity: row("a")},
			{ActionType: aztables.TransactionTypeAdd, Entity: row("c")},
		}, 0, http.StatusConflict},
		{"second exists", []aztables.TransactionAction{
			{ActionType: aztables.TransactionTypeAdd, Entity: row("c")},
			{ActionType: aztables.TransactionTypeAdd, Entity: row("b")},
		}, 1, http.StatusConflict},
	} {
		res, err := submit(tc.ops...)
		if err == nil || len(res) == 0 {
			t.Fatalf("%s: no failure (%v, %+v)", tc.name, err, res)
		}
		f := res[len(res)-1]
		t.Logf("%s: %+v", tc.name, f)
		if f.status != tc.code {
			t.Errorf("%s: status %d, want %d", tc.name, f.status, tc.code)
		}
		if f.index != tc.idx && f.index != -1 {
			t.Errorf("%s: failed index %d, want %d (or unknown)", tc.name, f.index, tc.idx)
		}
	}
	// Nothing of the failed batches was applied.
	if _, err := s.c.GetEntity(ctx, "customer", "c", nil); statusOf(err) != http.StatusNotFound {
		t.Fatalf("row c of a failed batch exists: %v", err)
	}
}
