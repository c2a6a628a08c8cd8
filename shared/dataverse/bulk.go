package dataverse

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
)

// ChunkError is the failure of one bulk request: rows recs[Start:End] of
// the caller's slice were sent together and none of them was written (the
// *Multiple messages are atomic per request).
type ChunkError struct {
	Start, End int
	Err        error
}

// BulkError lists the failed chunks of a bulk operation; the other chunks
// were written. Callers can retry or split the failed ranges to isolate bad rows.
type BulkError struct {
	Message string // "UpsertMultiple contacts"
	Chunks  []ChunkError
}

func (e *BulkError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "dataverse %s: %d chunk(s) failed", e.Message, len(e.Chunks))
	for i, c := range e.Chunks {
		if i == 3 {
			fmt.Fprintf(&b, "; …")
			break
		}
		fmt.Fprintf(&b, "; rows %d-%d: %v", c.Start, c.End-1, c.Err)
	}
	return b.String()
}

// Unwrap exposes each chunk's error to errors.Is/As.
func (e *BulkError) Unwrap() []error {
	errs := make([]error, len(e.Chunks))
	for i, c := range e.Chunks {
		errs[i] = c.Err
	}
	return errs
}

// UpsertMultiple creates or updates recs (each carrying its primary key or
// alternate key values) with UpsertMultiple, in chunks. logicalName is the
// table's logical name ("contact"). A failure is a *BulkError.
func (c *Client) UpsertMultiple(ctx context.Context, set, logicalName string, recs []Record) error {
	_, err := c.bulk(ctx, "UpsertMultiple", set, logicalName, recs)
	return err
}

// CreateMultiple creates recs in chunks and returns their ids in recs' order
// ("" for rows of failed chunks, which are listed in the *BulkError).
func (c *Client) CreateMultiple(ctx context.Context, set, logicalName string, recs []Record) ([]string, error) {
	return c.bulk(ctx, "CreateMultiple", set, logicalName, recs)
}

// UpdateMultiple updates existing rows (each carrying its primary key) in chunks.
func (c *Client) UpdateMultiple(ctx context.Context, set, logicalName string, recs []Record) error {
	_, err := c.bulk(ctx, "UpdateMultiple", set, logicalName, recs)
	return err
}

func (c *Client) bulk(ctx context.Context, message, set, logicalName string, recs []Record) ([]string, error) {
	if set == "" || logicalName == "" {
		return nil, fmt.Errorf("dataverse %s: set and logical name are required", message)
	}
	ids := make([]string, len(recs))
	if len(recs) == 0 {
		return ids, nil
	}
	odataType := "Microsoft.Dynamics.CRM." + logicalName
	path := set + "/Microsoft.Dynamics.CRM." + message
	type chunk struct{ start, end int }
	var chunks []chunk
	for s := 0; s < len(recs); s += c.chunk {
		chunks = append(chunks, chunk{s, min(s+c.chunk, len(recs))})
	}

	var (
		mu     sync.Mutex
		failed []ChunkError
		wg     sync.WaitGroup
	)
	work := make(chan chunk)
	workers := min(len(chunks), c.maxConc)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ch := range work {
				err := ctx.Err()
				var got []string
				if err == nil {
					got, err = c.sendChunk(ctx, message, path, odataType, recs[ch.start:ch.end])
				}
				mu.Lock()
				if err != nil {
					failed = append(failed, ChunkError{Start: ch.start, End: ch.end, Err: err})
				} else {
					copy(ids[ch.start:ch.end], got)
				}
				mu.Unlock()
			}
		}()
	}
	for _, ch := range chunks {
		work <- ch
	}
	close(work)
	wg.Wait()
	if len(failed) == 0 {
		return ids, nil
	}
	// report in row order
	for i := 1; i < len(failed); i++ {
		for j := i; j > 0 && failed[j].Start < failed[j-1].Start; j-- {
			failed[j], failed[j-1] = failed[j-1], failed[j]
		}
	}
	return ids, &BulkError{Message: message + " " + set, Chunks: failed}
}

func (c *Client) sendChunk(ctx context.Context, message, path, odataType string, recs []Record) ([]string, error) {
	targets := make([]Record, len(recs))
	for i, r := range recs {
		t := make(Record, len(r)+1)
		for k, v := range r {
			t[k] = v
		}
		t["@odata.type"] = odataType // copy: never change the caller's rows
		targets[i] = t
	}
	var out struct {
		IDs []string `json:"Ids"`
	}
	_, err := c.call(ctx, request{method: http.MethodPost, path: path, body: Record{"Targets": targets}}, &out)
	if err != nil {
		return nil, err
	}
	if message == "CreateMultiple" && len(out.IDs) != len(recs) {
		return nil, errors.New("dataverse " + message + ": answer has " + fmt.Sprint(len(out.IDs)) + " ids for " + fmt.Sprint(len(recs)) + " rows")
	}
	if len(out.IDs) != len(recs) {
		return make([]string, len(recs)), nil
	}
	return out.IDs, nil
}
