package dataverse

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
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

// RowErrors is the error of each of n rows sent in one bulk call that returned err: nil for
// the rows written; a chunk's error for the rows of a failed chunk (a *BulkError); err for
// every row when the call failed otherwise.
func RowErrors(err error, n int) []error {
	out := make([]error, n)
	if err == nil {
		return out
	}
	var be *BulkError
	if !errors.As(err, &be) {
		for i := range out {
			out[i] = err
		}
		return out
	}
	for _, c := range be.Chunks {
		for i := max(c.Start, 0); i < min(c.End, n); i++ {
			out[i] = c.Err
		}
	}
	return out
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

// Not every standard table has the bulk messages: "You should test whether individual
// standard tables support these messages"
// (https://learn.microsoft.com/power-apps/developer/data-platform/bulk-operations#availability-with-standard-tables);
// productpricelevel, for one, lists none. The client decides once per table, from
// sdkmessagefilters, or from the first refusal of a bulk request (at any status), and
// writes a table without them with $batch requests of one change set per
// chunk: atomic like a bulk request on a standard table, so callers see the same
// *BulkError either way.

// tableSupport is what the client knows of one table's bulk messages.
type tableSupport struct {
	mu      sync.Mutex
	decided bool // ok is known
	ok      bool // CreateMultiple/UpdateMultiple/UpsertMultiple exist
	probe   bool // sdkmessagefilters could not be read: the first bulk answer decides

	// size caps the rows per request after a request of the table timed out (0: the
	// client's bulk size), so later requests don't time out the same way; it doubles
	// again after sizeRegrow requests went through at it.
	size, okRun int
}

// sizeRegrow is the number of requests that must go through at a reduced size before
// the size doubles again.
const sizeRegrow = 20

// RowsPerRequest is how many rows of the table logicalName one write request carries
// now: the client's BulkChunkSize (DATAVERSE_BULK_SIZE), halved for the table after a
// request of it timed out. Callers building their own $batch requests size them by it.
func (c *Client) RowsPerRequest(logicalName string) int {
	t := c.table(logicalName)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.size > 0 {
		return t.size
	}
	return c.chunk
}

// sized records the outcome of a request of n rows: a timeout caps the table's size at
// half of n, a success at the capped size counts towards doubling it again.
func (c *Client) sized(logicalName string, n int, timedOut bool) {
	t := c.table(logicalName)
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case timedOut:
		if half := max(1, n/2); t.size == 0 || half < t.size {
			t.size, t.okRun = half, 0
			c.log(fmt.Sprintf("dataverse: a request of %d %s rows timed out; %d rows per request from now on", n, logicalName, half))
		}
	case t.size > 0 && n >= t.size:
		if t.okRun++; t.okRun >= sizeRegrow {
			t.size, t.okRun = t.size*2, 0
			if t.size >= c.chunk {
				t.size = 0
			}
		}
	}
}

func (c *Client) table(logicalName string) *tableSupport {
	t, _ := c.tables.LoadOrStore(logicalName, &tableSupport{})
	return t.(*tableSupport)
}

// bulkSupported reports whether to send the table's rows with the bulk messages,
// asking sdkmessagefilters the first time (one request per table and client).
func (c *Client) bulkSupported(ctx context.Context, logicalName string) bool {
	t := c.table(logicalName)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.decided || t.probe {
		return !t.decided || t.ok
	}
	ok, err := c.queryBulkSupport(ctx, logicalName)
	if err != nil {
		if ctx.Err() == nil {
			// can't read the message filters (a role without access): try the message
			t.probe = true
			c.log(fmt.Sprintf("dataverse: bulk messages of %s undecided (sdkmessagefilters: %v); the first answer decides", logicalName, err))
		}
		return true
	}
	t.decided, t.ok = true, ok
	if !ok {
		c.log(fmt.Sprintf("dataverse: %s has no CreateMultiple; writing it with $batch change sets", logicalName))
	}
	return ok
}

// queryBulkSupport asks whether CreateMultiple has a message filter for the table,
// the query Microsoft gives for this check.
func (c *Client) queryBulkSupport(ctx context.Context, logicalName string) (bool, error) {
	if !isSetName(logicalName) {
		return false, fmt.Errorf("dataverse: %q is not a logical name", logicalName)
	}
	found := false
	err := c.Query(ctx, "sdkmessagefilters", Query{
		Select: []string{"sdkmessagefilterid"},
		Filter: "sdkmessageid/name eq 'CreateMultiple' and primaryobjecttypecode eq '" + logicalName + "'",
		Top:    1,
	}, func(Record) error {
		found = true
		return nil
	})
	return found, err
}

// bulkAnswered records the outcome of a bulk request when it decides the table's
// support: a refusal of the message (whatever its status), or a success while the
// message filters could not be read. It reports whether err was such a refusal (the
// rows must go through $batch instead).
func (c *Client) bulkAnswered(logicalName string, err error) bool {
	t := c.table(logicalName)
	t.mu.Lock()
	defer t.mu.Unlock()
	refused := bulkRefused(err)
	switch {
	case refused:
		if !t.decided || t.ok {
			c.log(fmt.Sprintf("dataverse: %s refused a bulk message; writing it with $batch change sets: %v", logicalName, err))
		}
		t.decided, t.ok = true, false
	case err == nil && t.probe && !t.decided:
		t.decided, t.ok = true, true
	}
	return refused
}

// bulkRefused recognises the answers of a table without the bulk message: 404
// "Resource not found for the segment 'Microsoft.Dynamics.CRM.CreateMultiple'", and
// 0x80040800 "The 'CreateMultiple' method does not support entities of type …" (the
// form Dataverse gives a message without a processor for a table, e.g.
// microsoft/coe-starter-kit#9332), or "… is not enabled on the entity …", whatever
// the status.
func bulkRefused(err error) bool {
	e, ok := asError(err)
	if !ok {
		return false
	}
	msg := strings.ToLower(e.Message)
	return strings.EqualFold(e.Code, "0x80040800") ||
		strings.Contains(msg, "does not support entities of type") ||
		strings.Contains(msg, "is not enabled on the entity") ||
		(e.StatusCode == http.StatusNotFound && strings.Contains(msg, "multiple"))
}

// Splittable reports whether a request of several rows or parts that failed with err
// should be sent again in halves, never whole at the same size: a failure a smaller
// request can get past. Microsoft: "SQL timeout expired … This error is likely to occur
// if the batch size of your request is too large. To avoid SQL time-outs, reduce the
// batch size of your request."
// (https://learn.microsoft.com/troubleshoot/power-platform/power-apps/dataverse/bulk-operation-errors).
// Timeouts, 413 Payload Too Large, 5xx and lost answers count; a refusal (another 4xx),
// an answer no request gets past (IsUnsupported), an authentication failure and a
// context that ended do not.
func Splittable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	e, ok := asError(err)
	if !ok || e.Auth || IsUnsupported(err) {
		return false
	}
	if e.StatusCode == http.StatusRequestTimeout || e.StatusCode == http.StatusRequestEntityTooLarge {
		return true
	}
	return (e.StatusCode == 0 && e.Err != nil) || e.StatusCode >= 500
}

// timedOut: the request took too long (a gateway or SQL timeout, or the client's) or was
// too large (413), as opposed to failing for another reason; only those lower the table's
// request size.
func timedOut(err error) bool {
	e, ok := asError(err)
	if !ok {
		return false
	}
	if e.StatusCode == http.StatusRequestTimeout || e.StatusCode == http.StatusGatewayTimeout || e.StatusCode == http.StatusRequestEntityTooLarge ||
		strings.EqualFold(e.Code, "0x80044151") || strings.Contains(strings.ToLower(e.Message), "timeout expired") {
		return true
	}
	var ne interface{ Timeout() bool }
	return e.StatusCode == 0 && errors.As(e.Err, &ne) && ne.Timeout()
}

// bulkJob is one bulk call.
type bulkJob struct {
	message, set, logical string
	recs                  []Record
	ids                   []string

	mu     sync.Mutex
	failed []ChunkError
}

func (c *Client) bulk(ctx context.Context, message, set, logicalName string, recs []Record) ([]string, error) {
	if set == "" || logicalName == "" {
		return nil, fmt.Errorf("dataverse %s: set and logical name are required", message)
	}
	ids := make([]string, len(recs))
	if len(recs) == 0 {
		return ids, nil
	}
	j := &bulkJob{message: message, set: set, logical: logicalName, recs: recs, ids: ids}
	type chunk struct{ start, end int }
	var chunks []chunk
	size := c.RowsPerRequest(logicalName)
	if !c.bulkSupported(ctx, logicalName) {
		size = batchSpread(len(recs), size, c.throttle.sem.Limit())
	}
	for s := 0; s < len(recs); s += size {
		chunks = append(chunks, chunk{s, min(s+size, len(recs))})
	}
	var wg sync.WaitGroup
	work := make(chan chunk)
	workers := min(len(chunks), c.maxConc)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ch := range work {
				if err := ctx.Err(); err != nil {
					j.fail(ch.start, ch.end, err)
					continue
				}
				c.writeRange(ctx, j, ch.start, ch.end)
			}
		}()
	}
	for _, ch := range chunks {
		work <- ch
	}
	close(work)
	wg.Wait()
	if len(j.failed) == 0 {
		return ids, nil
	}
	failed := j.failed
	sort.Slice(failed, func(a, b int) bool { return failed[a].Start < failed[b].Start })
	return ids, &BulkError{Message: message + " " + set, Chunks: failed}
}

// batchSpreadMin is the fewest parts a $batch request is cut down to by batchSpread.
const batchSpreadMin = 10

// batchSpread is the parts per $batch request for n rows of a table without the bulk
// messages, at most size: each part of a $batch runs after the one before and costs
// the execution time of a request of its own, so one request of a hundred parts keeps
// a single slot busy while the others wait. The rows are spread over the requests that
// may be in flight (slots), down to batchSpreadMin parts each.
func batchSpread(n, size, slots int) int {
	if slots <= 1 || n <= batchSpreadMin {
		return size
	}
	per := (n + slots - 1) / slots
	return min(size, max(batchSpreadMin, per))
}

// BatchParts is how many of n independent parts to send per $batch request, at most
// most (batchSpread over the requests this client may have in flight now), for callers
// that build their own $batch requests.
func (c *Client) BatchParts(n, most int) int {
	return batchSpread(n, most, c.throttle.sem.Limit())
}

func (j *bulkJob) fail(start, end int, err error) {
	j.mu.Lock()
	j.failed = append(j.failed, ChunkError{Start: start, End: end, Err: err})
	j.mu.Unlock()
}

// writeRange writes rows [start, end) in one request. A request that timed out or
// failed with a 5xx is split in halves and each is sent on its own, never sent again
// at the same size; a single row is sent with the pipeline's usual retries.
func (c *Client) writeRange(ctx context.Context, j *bulkJob, start, end int) {
	recs := j.recs[start:end]
	multi := c.bulkSupported(ctx, j.logical)
	var got []string
	var err error
	if multi {
		got, err = c.sendChunk(ctx, j.message, j.set, j.logical, recs)
		if c.bulkAnswered(j.logical, err) {
			multi = false
		}
	}
	if !multi {
		got, err = c.sendBatchChunk(ctx, j.message, j.set, j.logical, recs)
	}
	if err == nil {
		copy(j.ids[start:end], got)
		c.sized(j.logical, end-start, false)
		return
	}
	if timedOut(err) {
		c.sized(j.logical, end-start, true)
	}
	if end-start > 1 && Splittable(ctx, err) {
		c.log(fmt.Sprintf("dataverse: %s %s of %d rows failed (%v); sending it in halves", j.message, j.set, end-start, err))
		mid := start + (end-start)/2
		c.writeRange(ctx, j, start, mid)
		c.writeRange(ctx, j, mid, end)
		return
	}
	j.fail(start, end, err)
}

func (c *Client) sendChunk(ctx context.Context, message, set, logicalName string, recs []Record) ([]string, error) {
	targets := make([]Record, len(recs))
	for i, r := range recs {
		t := make(Record, len(r)+1)
		for k, v := range r {
			t[k] = v
		}
		t["@odata.type"] = "Microsoft.Dynamics.CRM." + logicalName // copy: never change the caller's rows
		targets[i] = t
	}
	var out struct {
		IDs []string `json:"Ids"`
	}
	_, err := c.call(ctx, request{method: http.MethodPost, path: set + "/Microsoft.Dynamics.CRM." + message,
		body: Record{"Targets": targets}, throttledOnly: len(recs) > 1}, &out)
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

// sendBatchChunk writes recs as one $batch change set: a POST per row for
// CreateMultiple (rows carry their primary key), a PATCH per row for UpdateMultiple
// (If-Match: *) and UpsertMultiple. The row's key is its <logical name>id column or
// its "@odata.id".
func (c *Client) sendBatchChunk(ctx context.Context, message, set, logicalName string, recs []Record) ([]string, error) {
	pk := logicalName + "id"
	ops := make([]Op, len(recs))
	for i, r := range recs {
		if message == "CreateMultiple" {
			ops[i] = Op{Method: http.MethodPost, Path: set, Body: r}
			continue
		}
		body := make(Record, len(r))
		for k, v := range r {
			if k != pk && k != "@odata.id" && k != "@odata.type" {
				body[k] = v
			}
		}
		path := ""
		if id, _ := r[pk].(string); id != "" {
			path = EntityPath(set, id)
		} else if ref, _ := r["@odata.id"].(string); ref != "" {
			path = strings.TrimPrefix(ref, "/")
			if k := strings.Index(path, APIPath); k >= 0 {
				path = path[k+len(APIPath):]
			}
		} else {
			return nil, fmt.Errorf("dataverse %s %s: row %d has neither %s nor @odata.id", message, set, i, pk)
		}
		op := Op{Method: http.MethodPatch, Path: path, Body: body}
		if message == "UpdateMultiple" {
			op.Header = map[string]string{"If-Match": "*"}
		}
		ops[i] = op
	}
	res, err := c.batch(ctx, len(recs) > 1, []BatchPart{ChangeSet(ops...)})
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(recs))
	for _, r := range res {
		if r.Part >= 1 && r.Part <= len(ids) {
			ids[r.Part-1] = r.EntityID
		}
	}
	if message == "CreateMultiple" {
		for i, id := range ids {
			if id == "" {
				return nil, fmt.Errorf("dataverse %s %s ($batch): no id for row %d", message, set, i)
			}
		}
	}
	return ids, nil
}
