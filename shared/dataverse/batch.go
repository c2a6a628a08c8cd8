package dataverse

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"sort"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// MaxBatchRequests is Dataverse's limit of requests in one $batch.
const MaxBatchRequests = 1000

// BatchPart is one element of a $batch: an Op on its own, or a ChangeSet.
type BatchPart interface{ batchPart() }

// Op is one request inside a $batch.
type Op struct {
	Method string
	// Path is relative to the API root ("contacts(…)", "salesorderdetails"),
	// or a Content-ID reference to an earlier part of the same change set
	// ("$1", "$1/order_details").
	Path string
	Body Record // nil: no body
	// ContentID names the part so later parts of the change set can refer
	// to the row it creates as "$<ContentID>" (in Path or in an
	// "x@odata.bind" value). Ops in a change set without one get a number.
	ContentID string
	Header    map[string]string // extra headers, e.g. If-Match: *
}

func (Op) batchPart() {}

type changeSet []Op

func (changeSet) batchPart() {}

// ChangeSet groups ops that Dataverse applies atomically: all or nothing.
func ChangeSet(ops ...Op) BatchPart { return changeSet(ops) }

// BatchResult is the answer to one Op, in request order.
type BatchResult struct {
	Part       int    // 1-based number of the op answered, in request order; 0 when unknown
	ChangeSet  int    // 1-based number of the change set the op was in; 0 outside one
	ContentID  string // as sent (or assigned)
	Method     string // of the op this answers
	Path       string
	StatusCode int
	Header     http.Header
	Body       []byte
	EntityID   string // id from OData-EntityId, when the op created or upserted a row
	Err        *Error // non-nil when StatusCode >= 400
}

// Decode unmarshals the part's JSON body.
func (r BatchResult) Decode(v any) error {
	if len(r.Body) == 0 {
		return errors.New("dataverse: batch part has no body")
	}
	return json.Unmarshal(r.Body, v)
}

// BatchError says which part of a $batch failed. A failed change set was
// rolled back as a whole: none of its ops took effect.
type BatchError struct {
	Part      int // 1-based op number in request order (0: unknown)
	ChangeSet int // 1-based change set number (0: not in a change set)
	ContentID string
	Op        string // "POST salesorderdetails"
	Err       *Error
}

func (e *BatchError) Error() string {
	var where []string
	if e.Part > 0 {
		where = append(where, "part "+strconv.Itoa(e.Part))
	}
	if e.ChangeSet > 0 {
		where = append(where, "change set "+strconv.Itoa(e.ChangeSet)+" rolled back")
	}
	if e.ContentID != "" {
		where = append(where, "Content-ID "+e.ContentID)
	}
	if e.Op != "" {
		where = append(where, e.Op)
	}
	return fmt.Sprintf("dataverse $batch: %s failed: %v", strings.Join(where, ", "), e.Err)
}

func (e *BatchError) Unwrap() error { return e.Err }

// batchOp is an Op with its position.
type batchOp struct {
	Op
	index int // 1-based across the batch
	cs    int // 1-based change set, 0 outside
}

// Batch sends parts as one $batch request. Dataverse runs them in order and
// stops at the first failure. The results cover the ops that were answered;
// err is a *BatchError naming the first failed op (or an *Error when the
// whole request failed).
//
// A resent batch runs again the parts that had succeeded, so a batch holding an
// op that must not run twice (ConvertSalesOrderToInvoice, a create without its
// primary key) is sent once: after a 5xx, a timeout or a lost answer the error
// reports OutcomeUnknown. A batch of several parts, or one holding an op whose repeat is
// refused (refusesRepeat: closing an order), is sent again only after a 429: after a
// timeout or a 5xx the caller splits it (Splittable) or sends its parts alone. A part
// answered 429 holds every request of the client until its Retry-After has passed, as a
// 429 for the whole request does.
func (c *Client) Batch(ctx context.Context, parts ...BatchPart) ([]BatchResult, error) {
	return c.batch(ctx, false, parts)
}

// batch is Batch; throttledOnly sends it again only after a 429 (bulk writes split
// a request that failed otherwise).
func (c *Client) batch(ctx context.Context, throttledOnly bool, parts []BatchPart) ([]BatchResult, error) {
	ops, body, boundary, err := buildBatch(c.base.Path+APIPath, parts)
	if err != nil {
		return nil, err
	}
	unsafe := false
	// A batch of several parts is not sent again whole after a timeout or a 5xx (only
	// after a 429, which Dataverse answers before running anything): the caller splits it
	// or sends its parts alone (docs/dataverse-mapping.md: "a request that times out is
	// split, not re-sent whole").
	throttledOnly = throttledOnly || len(parts) > 1
	for _, o := range ops {
		unsafe = unsafe || nonIdempotent(o.Method, o.Path, o.Body)
		throttledOnly = throttledOnly || refusesRepeat(o.Method, o.Path)
	}
	resp, err := c.do(ctx, request{
		method: http.MethodPost, path: "$batch", rawBody: body,
		ctype: "multipart/mixed; boundary=" + boundary, op: "POST $batch", anyStatus: true,
		unsafe: unsafe, throttledOnly: throttledOnly,
	})
	if err != nil {
		return nil, err
	}
	rh, rb := resp.header, resp.body
	results, perr := parseBatchResponse(rh.Get("Content-Type"), rb, ops)
	if perr != nil {
		if unsafe {
			return nil, &Error{Op: "POST $batch", StatusCode: resp.status, Retryable: true, OutcomeUnknown: true,
				Err: fmt.Errorf("reading the answer: %w", perr)}
		}
		return nil, fmt.Errorf("dataverse POST $batch: %w", perr)
	}
	for _, r := range results {
		if r.StatusCode == http.StatusTooManyRequests {
			c.throttle.partThrottled(r.Header)
		}
	}
	for _, r := range results {
		if r.Err != nil {
			if unsafe && unclearStatus(r.StatusCode) && nonIdempotent(r.Method, r.Path, opBody(ops, r.Part)) {
				r.Err.OutcomeUnknown = true
			}
			be := &BatchError{Part: r.Part, ChangeSet: r.ChangeSet, ContentID: r.ContentID, Err: r.Err}
			if r.Method != "" {
				be.Op = r.Method + " " + opPath(r.Path)
			}
			return results, be
		}
	}
	if resp.status >= 400 { // failed without naming a part
		return results, &Error{Op: "POST $batch", StatusCode: resp.status, Retryable: retryableStatus(resp.status),
			OutcomeUnknown: unsafe && unclearStatus(resp.status), Message: "the batch failed but no part carries an error"}
	}
	return results, nil
}

// opBody is the body of op number part (1-based), nil when unknown.
func opBody(ops []batchOp, part int) Record {
	if part >= 1 && part <= len(ops) {
		return ops[part-1].Body
	}
	return nil
}

func isMultipart(h http.Header) bool {
	mt, _, err := mime.ParseMediaType(h.Get("Content-Type"))
	return err == nil && strings.HasPrefix(mt, "multipart/")
}

// buildBatch writes the multipart/mixed body (CRLF line ends, as Dataverse
// requires). apiPath is the absolute path of the API root for request lines.
func buildBatch(apiPath string, parts []BatchPart) ([]batchOp, []byte, string, error) {
	var ops []batchOp
	used := map[string]bool{}
	csn := 0
	for _, p := range parts {
		switch p := p.(type) {
		case Op:
			ops = append(ops, batchOp{Op: p, index: len(ops) + 1})
		case changeSet:
			if len(p) == 0 {
				return nil, nil, "", errors.New("dataverse $batch: empty change set")
			}
			csn++
			for _, o := range p {
				if strings.EqualFold(o.Method, http.MethodGet) {
					return nil, nil, "", fmt.Errorf("dataverse $batch: GET %s not allowed in a change set", o.Path)
				}
				ops = append(ops, batchOp{Op: o, index: len(ops) + 1, cs: csn})
			}
		case nil:
			return nil, nil, "", errors.New("dataverse $batch: nil part")
		default:
			return nil, nil, "", fmt.Errorf("dataverse $batch: unsupported part %T", p)
		}
	}
	if len(ops) == 0 {
		return nil, nil, "", errors.New("dataverse $batch: no requests")
	}
	if len(ops) > MaxBatchRequests {
		return nil, nil, "", fmt.Errorf("dataverse $batch: %d requests, more than %d", len(ops), MaxBatchRequests)
	}
	for _, o := range ops {
		if o.ContentID != "" {
			if used[o.ContentID] {
				return nil, nil, "", fmt.Errorf("dataverse $batch: Content-ID %q used twice", o.ContentID)
			}
			used[o.ContentID] = true
		}
	}
	next := 1
	for i := range ops {
		if ops[i].cs > 0 && ops[i].ContentID == "" {
			for used[strconv.Itoa(next)] {
				next++
			}
			ops[i].ContentID = strconv.Itoa(next)
			used[ops[i].ContentID] = true
		}
	}

	boundary := "batch_" + uuid.NewString()
	var b bytes.Buffer
	var csBoundary string
	for i, o := range ops {
		if o.cs > 0 && (i == 0 || ops[i-1].cs != o.cs) {
			csBoundary = "changeset_" + uuid.NewString()
			fmt.Fprintf(&b, "--%s\r\nContent-Type: multipart/mixed; boundary=%s\r\n\r\n", boundary, csBoundary)
		}
		if o.cs > 0 {
			fmt.Fprintf(&b, "--%s\r\n", csBoundary)
		} else {
			fmt.Fprintf(&b, "--%s\r\n", boundary)
		}
		b.WriteString("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n")
		if o.ContentID != "" {
			fmt.Fprintf(&b, "Content-ID: %s\r\n", o.ContentID)
		}
		b.WriteString("\r\n")
		target := o.Path
		if !strings.HasPrefix(target, "$") && !strings.HasPrefix(target, "https://") && !strings.HasPrefix(target, "http://") {
			target = apiPath + strings.TrimPrefix(target, "/")
		}
		fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", strings.ToUpper(o.Method), escapeTarget(target))
		b.WriteString("Accept: application/json\r\n")
		keys := make([]string, 0, len(o.Header))
		for k := range o.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if strings.ContainsAny(k+o.Header[k], "\r\n") {
				return nil, nil, "", fmt.Errorf("dataverse $batch: part %d: header %q contains a line break", o.index, k)
			}
			fmt.Fprintf(&b, "%s: %s\r\n", k, o.Header[k])
		}
		if o.Body != nil {
			js, err := json.Marshal(o.Body)
			if err != nil {
				return nil, nil, "", fmt.Errorf("dataverse $batch: part %d: encoding body: %w", o.index, err)
			}
			// Content-Length too: some Dataverse front ends answer writes
			// without it with "Stream was not readable"
			fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(js))
			b.Write(js)
			b.WriteString("\r\n")
		} else {
			// end of headers, then the CRLF that belongs to the next delimiter
			b.WriteString("\r\n\r\n")
		}
		if o.cs > 0 && (i == len(ops)-1 || ops[i+1].cs != o.cs) {
			fmt.Fprintf(&b, "--%s--\r\n", csBoundary)
		}
	}
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return ops, b.Bytes(), boundary, nil
}

// escapeTarget percent-encodes what can't appear in a request line
// (spaces and quotes in $filter values, controls, non-ASCII); existing
// escapes are kept.
func escapeTarget(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch <= ' ' || ch >= 0x7f || strings.IndexByte("\"<>\\^`{|}", ch) >= 0 {
			fmt.Fprintf(&b, "%%%02X", ch)
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}

// parseBatchResponse reads a multipart/mixed $batch answer, nested change
// set answers included, and pairs every answered part with its op.
func parseBatchResponse(contentType string, body []byte, ops []batchOp) ([]BatchResult, error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		return nil, fmt.Errorf("answer is %q, not multipart", contentType)
	}
	// group ops by top-level part: each change set is one part
	type group struct {
		ops []batchOp
		cs  int
	}
	var groups []group
	for _, o := range ops {
		if o.cs > 0 && len(groups) > 0 && groups[len(groups)-1].cs == o.cs {
			g := &groups[len(groups)-1]
			g.ops = append(g.ops, o)
			continue
		}
		groups = append(groups, group{ops: []batchOp{o}, cs: o.cs})
	}
	var results []BatchResult
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	for gi := 0; ; gi++ {
		part, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return results, fmt.Errorf("reading part %d: %w", gi+1, err)
		}
		var g group
		if gi < len(groups) {
			g = groups[gi]
		}
		pmt, pparams, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		if strings.HasPrefix(pmt, "multipart/") {
			inner := multipart.NewReader(part, pparams["boundary"])
			for k := 0; ; k++ {
				ip, err := inner.NextRawPart()
				if err == io.EOF {
					break
				}
				if err != nil {
					return results, fmt.Errorf("reading change set part %d.%d: %w", gi+1, k+1, err)
				}
				r, err := readHTTPPart(ip)
				if err != nil {
					return results, fmt.Errorf("change set part %d.%d: %w", gi+1, k+1, err)
				}
				results = append(results, matchOp(r, ip.Header, g.ops, k, g.cs))
			}
			continue
		}
		r, err := readHTTPPart(part)
		if err != nil {
			return results, fmt.Errorf("part %d: %w", gi+1, err)
		}
		// a change set that failed may come back as one error part
		results = append(results, matchOp(r, part.Header, g.ops, 0, g.cs))
	}
	return results, nil
}

// matchOp fills op details: by Content-ID when the part echoes one, else by
// position in the group (a single answer for a failed change set keeps the
// change set number but names no op unless it carries a Content-ID).
func matchOp(r BatchResult, h textproto.MIMEHeader, group []batchOp, pos, cs int) BatchResult {
	r.ChangeSet = cs
	cid := h.Get("Content-ID")
	if cid == "" {
		cid = r.Header.Get("Content-ID")
	}
	if cid != "" {
		r.ContentID = cid
		for _, o := range group {
			if o.ContentID == cid {
				r.Part, r.Method, r.Path = o.index, o.Method, o.Path
				break
			}
		}
	} else if cs == 0 || r.StatusCode < 400 || len(group) == 1 {
		if pos < len(group) {
			o := group[pos]
			r.Part, r.ContentID, r.Method, r.Path = o.index, o.ContentID, o.Method, o.Path
		}
	}
	if r.Err != nil && r.Method != "" {
		r.Err.Op = r.Method + " " + opPath(r.Path)
	}
	return r
}

// readHTTPPart parses one application/http part: status line, headers, body.
func readHTTPPart(p io.Reader) (BatchResult, error) {
	resp, err := http.ReadResponse(bufio.NewReader(p), nil)
	if err != nil {
		return BatchResult{}, fmt.Errorf("parsing HTTP answer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return BatchResult{}, fmt.Errorf("reading HTTP answer body: %w", err)
	}
	r := BatchResult{StatusCode: resp.StatusCode, Header: resp.Header, Body: body,
		EntityID: EntityIDFromURL(resp.Header.Get("OData-EntityId"))}
	if resp.StatusCode >= 400 {
		r.Err = errorFromResponse("", resp.StatusCode, resp.Header, body)
	}
	return r, nil
}
