package tablestorage

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
	"slices"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
)

// aztables' SubmitTransaction returns neither the new ETags of the rows it wrote nor
// which operation failed. We need both (the record's new version; whether the record
// or its counter conflicted), so a per-call policy keeps the raw $batch response for
// calls whose context asks for it, and parseBatch reads it.

type captureKey struct{}

type capture struct {
	status int
	header http.Header
	body   []byte
}

type capturePolicy struct{}

func (capturePolicy) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	if c, ok := req.Raw().Context().Value(captureKey{}).(*capture); ok && err == nil && resp != nil {
		if b, perr := runtime.Payload(resp); perr == nil {
			c.status, c.header, c.body = resp.StatusCode, resp.Header.Clone(), b
		}
	}
	return resp, err
}

// submit sends ops as one entity-group transaction and reads its raw answer: err is the
// service's, results and perr what parseBatch made of the answer.
func (s *Store) submit(ctx context.Context, ops []aztables.TransactionAction) (results []opResult, perr, err error) {
	capt := &capture{}
	_, err = s.c.SubmitTransaction(context.WithValue(ctx, captureKey{}, capt), ops, nil)
	results, perr = parseBatch(capt)
	return results, perr, err
}

// versionsTold reports whether a committed transaction's answer gave every one of its n
// operations its new ETag; when not, the rows written must be read to learn them.
func versionsTold(results []opResult, perr error, n int) bool {
	return perr == nil && len(results) == n && !slices.ContainsFunc(results, func(r opResult) bool { return r.etag == "" })
}

// opResult is one operation's answer inside a $batch response.
type opResult struct {
	status  int
	etag    string
	code    string
	message string
	index   int // failed operation's index from the message ("1:The update condition..."), -1 if none
}

// parseBatch reads the changeset responses of a $batch answer, in operation order.
// On failure the service answers with one part: the failed operation's error.
func parseBatch(c *capture) ([]opResult, error) {
	if c == nil || c.body == nil {
		return nil, errors.New("no batch response captured")
	}
	outer, err := boundaryOf(c.header.Get("Content-Type"), c.body)
	if err != nil {
		return nil, err
	}
	mr := multipart.NewReader(bytes.NewReader(c.body), outer)
	part, err := mr.NextPart()
	if err != nil {
		return nil, fmt.Errorf("batch response: %w", err)
	}
	innerBody, err := io.ReadAll(part)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("batch response: %w", err)
	}
	var results []opResult
	ct := part.Header.Get("Content-Type")
	if !strings.HasPrefix(strings.ToLower(ct), "multipart/") {
		// Not a changeset: a single response.
		r, err := readOpResponse(innerBody)
		if err != nil {
			return nil, err
		}
		return []opResult{r}, nil
	}
	inner, err := boundaryOf(ct, innerBody)
	if err != nil {
		return nil, err
	}
	ir := multipart.NewReader(bytes.NewReader(innerBody), inner)
	for {
		p, err := ir.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("batch response: %w", err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return nil, fmt.Errorf("batch response: %w", err)
		}
		r, err := readOpResponse(b)
		if err != nil {
			return nil, err
		}
		results = append(results, r)
	}
	return results, nil
}

func boundaryOf(contentType string, body []byte) (string, error) {
	if _, params, err := mime.ParseMediaType(contentType); err == nil && params["boundary"] != "" {
		return params["boundary"], nil
	}
	// Fall back to the first line of the body ("--<boundary>"), as aztables does.
	line, _, _ := bytes.Cut(body, []byte("\n"))
	line = bytes.TrimSpace(line)
	if !bytes.HasPrefix(line, []byte("--")) || len(line) < 3 {
		return "", fmt.Errorf("batch response without a multipart boundary")
	}
	return string(line[2:]), nil
}

func readOpResponse(b []byte) (opResult, error) {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		return opResult{}, fmt.Errorf("batch response part: %w", err)
	}
	defer resp.Body.Close()
	r := opResult{status: resp.StatusCode, etag: resp.Header.Get("ETag"), index: -1}
	if resp.StatusCode >= 400 {
		body, _ := io.ReadAll(resp.Body)
		var e struct {
			Error struct {
				Code    string `json:"code"`
				Message struct {
					Value string `json:"value"`
				} `json:"message"`
			} `json:"odata.error"`
		}
		if json.Unmarshal(body, &e) == nil {
			r.code, r.message = e.Error.Code, e.Error.Message.Value
			if i, _, ok := strings.Cut(r.message, ":"); ok {
				if n, err := strconv.Atoi(i); err == nil {
					r.index = n
				}
			}
		}
	}
	return r, nil
}
