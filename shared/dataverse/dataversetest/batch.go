package dataversetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/google/uuid"
)

// maxBatchParts is the documented ceiling of requests per $batch (Learn: webapi/execute-batch-operations-using-web-api).
const maxBatchParts = 1000

var errNotCRLF = errf(http.StatusBadRequest, codePayloadError,
	"Error identified in Payload provided by the user for Entity :'', For more information on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ----> InnerException : Microsoft.OData.ODataException: Stream was not readable.")

type mimePart struct {
	header http.Header
	body   []byte
}

// splitMultipart splits a multipart body. Every delimiter and header line must end in
// CRLF; Dataverse answers bare LF with 400 0x80048d19 "Stream was not readable" (web-api-client-errors).
func splitMultipart(body []byte, boundary string) ([]mimePart, *apiError) {
	delim := []byte("--" + boundary)
	if !bytes.HasPrefix(body, delim) {
		i := bytes.Index(body, append([]byte("\r\n"), delim...))
		if i < 0 {
			if bytes.Contains(body, delim) {
				return nil, errNotCRLF
			}
			return nil, errf(http.StatusBadRequest, codePayloadError, "The batch request body does not contain the boundary '%s'.", boundary)
		}
		body = body[i+2:]
	}
	if bytes.Count(body, delim) != bytes.Count(body, append([]byte("\r\n"), delim...))+1 {
		return nil, errNotCRLF
	}
	sep := append([]byte("\r\n"), delim...)
	chunks := bytes.Split(body[len(delim):], sep)
	var parts []mimePart
	for n, c := range chunks {
		if bytes.HasPrefix(c, []byte("--")) {
			return parts, nil
		}
		if !bytes.HasPrefix(c, []byte("\r\n")) {
			return nil, errNotCRLF
		}
		c = c[2:]
		h, rest, err := parseHeaderBlock(c)
		if err != nil {
			return nil, err
		}
		parts = append(parts, mimePart{header: h, body: rest})
		if n == len(chunks)-1 {
			return nil, errf(http.StatusBadRequest, codePayloadError, "The batch request body is missing its closing boundary '--%s--'.", boundary)
		}
	}
	return parts, nil
}

// parseHeaderBlock reads CRLF-terminated header lines up to the empty line.
func parseHeaderBlock(b []byte) (http.Header, []byte, *apiError) {
	h := http.Header{}
	for {
		i := bytes.Index(b, []byte("\r\n"))
		if i < 0 {
			if len(bytes.TrimSpace(b)) == 0 {
				return h, nil, nil
			}
			return nil, nil, errNotCRLF
		}
		line := b[:i]
		b = b[i+2:]
		if len(line) == 0 {
			return h, b, nil
		}
		if bytes.IndexByte(line, '\n') >= 0 {
			return nil, nil, errNotCRLF
		}
		k, v, ok := strings.Cut(string(line), ":")
		if !ok {
			return nil, nil, errNotCRLF
		}
		h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
}

// batchOp is one request inside a batch.
type batchOp struct {
	contentID string
	method    string
	target    string // as written in the request line
	header    http.Header
	body      []byte
}

func parseHTTPPart(p mimePart) (*batchOp, *apiError) {
	if ct := p.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/http") {
		return nil, errf(http.StatusBadRequest, codePayloadError, "Batch part has Content-Type '%s', want application/http.", ct)
	}
	i := bytes.Index(p.body, []byte("\r\n"))
	if i < 0 {
		if bytes.IndexByte(p.body, '\n') >= 0 {
			return nil, errNotCRLF
		}
		i = len(p.body) // a request line without headers: its CRLF belongs to the delimiter
		p.body = append(p.body, '\r', '\n')
	}
	fields := strings.Fields(string(p.body[:i]))
	if len(fields) < 2 {
		return nil, errf(http.StatusBadRequest, codePayloadError, "Batch part has an invalid request line '%s'.", p.body[:i])
	}
	h, body, err := parseHeaderBlock(p.body[i+2:])
	if err != nil {
		return nil, err
	}
	return &batchOp{contentID: p.header.Get("Content-ID"), method: strings.ToUpper(fields[0]), target: fields[1],
		header: h, body: bytes.TrimRight(body, "\r\n")}, nil
}

// batchEntry is a top-level batch item: one request or a change set.
type batchEntry struct {
	op        *batchOp
	changeSet []*batchOp
	isSet     bool
}

var contentRefRe = regexp.MustCompile(`^\$([A-Za-z0-9_.\-]+)`)

// batch runs a $batch for user and returns the answer, the rows written, the rows read
// and the operations to charge (parts plus the retrieves return=representation adds).
func (s *Server) batch(q *apiReq, user string) (*apiResp, int, int, int) {
	resp, rows, reads, ops, retrieves := s.batchInner(q, user)
	s.count(func(st *Stats) { st.BatchParts += ops })
	if ops == 0 {
		ops = 1
	}
	return resp, rows, reads, ops + retrieves
}

func (s *Server) batchInner(q *apiReq, user string) (*apiResp, int, int, int, int) {
	_, params, err := mime.ParseMediaType(q.header.Get("Content-Type"))
	if err != nil || params["boundary"] == "" {
		return errResp(errf(http.StatusBadRequest, codePayloadError, "The $batch request must have Content-Type multipart/mixed with a boundary.")), 0, 0, 0, 0
	}
	parts, perr := splitMultipart(q.body, params["boundary"])
	if perr != nil {
		return errResp(perr), 0, 0, 0, 0
	}
	var entries []batchEntry
	total := 0
	for _, p := range parts {
		ct := p.header.Get("Content-Type")
		if strings.HasPrefix(ct, "multipart/mixed") {
			_, cp, err := mime.ParseMediaType(ct)
			if err != nil || cp["boundary"] == "" {
				return errResp(errf(http.StatusBadRequest, codePayloadError, "Change set without boundary.")), 0, 0, 0, 0
			}
			inner, perr := splitMultipart(p.body, cp["boundary"])
			if perr != nil {
				return errResp(perr), 0, 0, 0, 0
			}
			e := batchEntry{isSet: true}
			for _, ip := range inner {
				if strings.HasPrefix(ip.header.Get("Content-Type"), "multipart/") {
					return errResp(errf(http.StatusBadRequest, codePayloadError, "Change sets can't be nested.")), 0, 0, 0, 0
				}
				op, perr := parseHTTPPart(ip)
				if perr != nil {
					return errResp(perr), 0, 0, 0, 0
				}
				if op.method == http.MethodGet {
					return errResp(errf(http.StatusBadRequest, codePayloadError, "GET requests are not allowed inside a change set.")), 0, 0, 0, 0
				}
				e.changeSet = append(e.changeSet, op)
			}
			total += len(e.changeSet)
			entries = append(entries, e)
			continue
		}
		op, perr := parseHTTPPart(p)
		if perr != nil {
			return errResp(perr), 0, 0, 0, 0
		}
		total++
		entries = append(entries, batchEntry{op: op})
	}
	if total > maxBatchParts {
		return errResp(errf(http.StatusBadRequest, codeZero, "The number of requests in the batch (%d) exceeds the limit of %d.", total, maxBatchParts)), 0, 0, 0, 0
	}
	continueOnError := prefers(q.header, "odata.continue-on-error")
	var paths []string
	for _, e := range entries {
		for _, op := range append(e.changeSet, e.op) {
			if op != nil {
				p := op.target
				if i := strings.Index(p, apiRoot); i >= 0 {
					p = p[i+len(apiRoot):]
				}
				paths = append(paths, strings.TrimPrefix(p, "/"))
			}
		}
	}
	faultAt, faultStatus, faultWait := s.batchPartFault(paths)

	s.mu.Lock()
	defer s.mu.Unlock()
	x := s.st.begin()
	var out bytes.Buffer
	boundary := "batchresponse_" + uuid.NewString()
	failed := false
	failStatus := 0
	reads, retrieves, n := 0, 0, 0
	// run executes one operation, or answers it with the injected fault.
	run := func(op *batchOp, refs map[string]string) *apiResp {
		n++
		if n != faultAt {
			r := s.execBatchOp(x, q, op, refs)
			reads += r.rowsRead
			retrieves += r.retrieves
			return r
		}
		if faultStatus == http.StatusTooManyRequests {
			return errResp(s.lim.throttle(user, codeReqLimit, s.scaled(faultWait)))
		}
		return errResp(errf(faultStatus, codeUnexpected, "An unexpected error occurred (injected fault)."))
	}
	fail := func(status int) {
		failed = true
		if failStatus == 0 {
			failStatus = status
		}
	}
	for _, e := range entries {
		if !e.isSet {
			sp := x.savepoint()
			r := run(e.op, nil)
			if r.status >= 400 {
				x.rollbackTo(sp)
			}
			writeHTTPPart(&out, boundary, "", r)
			if r.status >= 400 {
				fail(r.status)
				if !continueOnError {
					break
				}
			}
			continue
		}
		// A change set is atomic: the first failure rolls back its earlier operations
		// and the failing operation's response stands for the whole change set.
		sp := x.savepoint()
		refs := map[string]string{}
		var resps []*apiResp
		var bad *apiResp
		for _, op := range e.changeSet {
			r := run(op, refs)
			if r.status >= 400 {
				bad = r
				break
			}
			if op.contentID != "" && r.entityURL != "" {
				refs[op.contentID] = r.entityURL
			}
			r.header.Set("Content-ID", op.contentID)
			resps = append(resps, r)
		}
		if bad != nil {
			x.rollbackTo(sp)
			writeHTTPPart(&out, boundary, "", bad)
			fail(bad.status)
			if !continueOnError {
				break
			}
			continue
		}
		cs := "changesetresponse_" + uuid.NewString()
		fmt.Fprintf(&out, "--%s\r\nContent-Type: multipart/mixed; boundary=%s\r\n\r\n", boundary, cs)
		for i, r := range resps {
			writeHTTPPart(&out, cs, e.changeSet[i].contentID, r)
		}
		fmt.Fprintf(&out, "--%s--\r\n", cs)
	}
	fmt.Fprintf(&out, "--%s--\r\n", boundary)
	h := http.Header{}
	h.Set("Content-Type", "multipart/mixed; boundary="+boundary)
	status := http.StatusOK
	if continueOnError {
		h.Set("Preference-Applied", "odata.continue-on-error")
	} else if failed {
		// Stop at the first error; the batch's status is 400 in Microsoft's example
		// (learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api#handling-errors).
		// A server error (5xx) in a part fails the batch with that status (not documented):
		// a client that resends 5xx answers runs the earlier parts again.
		status = http.StatusBadRequest
		if failStatus >= 500 {
			status = failStatus
		}
	}
	s.recordHistory(x, "POST $batch: "+strings.Join(paths, ", "))
	return &apiResp{status: status, header: h, body: out.Bytes()}, x.rows, reads, total, retrieves
}

// execBatchOp runs one part, resolving Content-ID references ($n) in its URL and body.
func (s *Server) execBatchOp(x *tx, q *apiReq, op *batchOp, refs map[string]string) *apiResp {
	target := op.target
	if m := contentRefRe.FindStringSubmatch(target); m != nil {
		u, ok := refs[m[1]]
		if !ok {
			return errResp(errf(http.StatusBadRequest, codeZero, "Content-ID Reference: '$%s' does not exist in the batch context.", m[1]))
		}
		target = u + target[len(m[0]):]
	}
	if i := strings.Index(target, apiRoot); i >= 0 {
		target = target[i+len(apiRoot):]
	}
	target = strings.TrimPrefix(target, "/")
	path, rawQuery, _ := strings.Cut(target, "?")
	qv, err := url.ParseQuery(rawQuery)
	if err != nil {
		return errResp(errf(http.StatusBadRequest, codeZero, "Invalid query string in batch part."))
	}
	body := op.body
	if len(bytes.TrimSpace(body)) > 0 && refs != nil {
		nb, aerr := substituteRefs(body, refs)
		if aerr != nil {
			return errResp(aerr)
		}
		body = nb
	}
	if path == "$batch" {
		return errResp(errf(http.StatusBadRequest, codePayloadError, "Batches can't be nested."))
	}
	sub := &apiReq{method: op.method, path: path, query: qv, header: op.header, body: body, base: q.base}
	return s.exec(x, sub)
}

// substituteRefs replaces "$n" values of @odata.bind / @odata.id properties.
func substituteRefs(body []byte, refs map[string]string) ([]byte, *apiError) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return body, nil // let the operation report the bad body
	}
	changed := false
	for k, v := range m {
		str, ok := v.(string)
		if !ok || !(strings.HasSuffix(k, "@odata.bind") || strings.HasSuffix(k, "@odata.id")) {
			continue
		}
		mm := contentRefRe.FindStringSubmatch(str)
		if mm == nil || len(mm[0]) != len(str) {
			continue
		}
		u, ok := refs[mm[1]]
		if !ok {
			return nil, errf(http.StatusBadRequest, codeZero, "Content-ID Reference: '$%s' does not exist in the batch context.", mm[1])
		}
		m[k] = u
		changed = true
	}
	if !changed {
		return body, nil
	}
	b, _ := json.Marshal(m)
	return b, nil
}

func writeHTTPPart(out *bytes.Buffer, boundary, contentID string, r *apiResp) {
	fmt.Fprintf(out, "--%s\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n", boundary)
	if contentID != "" {
		fmt.Fprintf(out, "Content-ID: %s\r\n", contentID)
	}
	fmt.Fprintf(out, "\r\nHTTP/1.1 %d %s\r\n", r.status, http.StatusText(r.status))
	if r.header.Get("Content-Type") == "" && len(r.body) > 0 {
		r.header.Set("Content-Type", "application/json; odata.metadata=minimal")
	}
	r.header.Set("OData-Version", "4.0")
	for _, k := range sortedKeys(r.header) {
		if k == "Content-Id" || k == "Content-ID" {
			continue
		}
		for _, v := range r.header[k] {
			fmt.Fprintf(out, "%s: %s\r\n", k, v)
		}
	}
	out.WriteString("\r\n")
	if len(r.body) > 0 {
		out.Write(r.body)
	}
	out.WriteString("\r\n")
}
