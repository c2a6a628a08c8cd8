package dataverse_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
)

// bulkAnswer answers a bulk request (…/Microsoft.Dynamics.CRM.UpsertMultiple) with status
// when refuse says so for its number of Targets; everything else goes to the simulator.
type bulkAnswer struct {
	next     *http.Client
	status   int
	message  string
	refuse   func(targets int) bool
	requests atomic.Int32
	sizes    []int
}

func (a *bulkAnswer) Do(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "Microsoft.Dynamics.CRM.UpsertMultiple") {
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		var env struct{ Targets []any }
		_ = json.Unmarshal(b, &env)
		a.requests.Add(1)
		a.sizes = append(a.sizes, len(env.Targets))
		if a.refuse(len(env.Targets)) {
			return dataversetest.ErrorAnswer(r, a.status, "", a.message), nil
		}
	}
	return a.next.Do(r)
}

func bulkClient(t *testing.T, a *bulkAnswer) (*dataverse.Client, *dataversetest.Server) {
	t.Helper()
	s := dataversetest.NewServer(dataversetest.Options{})
	t.Cleanup(s.Close)
	a.next = s.HTTPClient()
	c, err := s.Client(dataverse.Options{Transport: a, MaxRetries: 1, RetryDelay: time.Millisecond,
		MaxRetryDelay: 10 * time.Millisecond, BulkChunkSize: 8, NoPacing: true})
	if err != nil {
		t.Fatal(err)
	}
	return c, s
}

func errContactRows(n int) []dataverse.Record {
	recs := make([]dataverse.Record, n)
	for i := range recs {
		recs[i] = dataverse.Record{"contactid": uuid.NewString(), "lastname": "L"}
	}
	return recs
}

// A bulk request answered 413 Payload Too Large ("the request length is too large";
// Learn, compose-http-requests-handle-errors) is sent again in halves, as for a SQL
// timeout, and every row lands.
func TestBulk413SentInHalves(t *testing.T) {
	a := &bulkAnswer{status: http.StatusRequestEntityTooLarge, message: "The request length is too large.",
		refuse: func(n int) bool { return n > 2 }}
	c, s := bulkClient(t, a)
	ctx := context.Background()
	err := c.UpsertMultiple(ctx, "contacts", "contact", errContactRows(8))
	var bulk *dataverse.BulkError
	errors.As(err, &bulk)
	t.Logf("requests=%d sizes=%v err=%v retryable=%v splittable=%v rows written=%d", a.requests.Load(), a.sizes, err,
		dataverse.IsRetryable(err), bulk != nil && dataverse.Splittable(ctx, bulk.Chunks[0].Err), s.Stats().RowsWritten)
	if err != nil {
		t.Errorf("a 413 bulk request was not sent again in smaller requests: all 8 rows failed, retryable=%v", dataverse.IsRetryable(err))
	}
}

// A bulk request answered 501 Not Implemented is not halved: no smaller request gets past
// it (2n-1 refused requests for n rows, at every delivery).
func TestBulk501NotHalved(t *testing.T) {
	a := &bulkAnswer{status: http.StatusNotImplemented, message: "The requested operation is not implemented.",
		refuse: func(int) bool { return true }}
	c, _ := bulkClient(t, a)
	ctx := context.Background()
	err := c.UpsertMultiple(ctx, "contacts", "contact", errContactRows(8))
	var bulk *dataverse.BulkError
	errors.As(err, &bulk)
	t.Logf("requests=%d sizes=%v failed chunks=%d", a.requests.Load(), a.sizes, len(bulk.Chunks))
	if a.requests.Load() != 1 {
		t.Errorf("a 501 bulk request was split and resent %d times in all; want 1", a.requests.Load())
	}
}
