package dataverse

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
)

func TestUpsertMultipleChunksAndReportsFailedChunks(t *testing.T) {
	var mu sync.Mutex
	var sizes []int
	var badType int
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		s := readSeen(r)
		if s.Method != "POST" || s.Path != "contacts/Microsoft.Dynamics.CRM.UpsertMultiple" {
			dvError(w, 404, "0x8006088a", "not found "+s.Path)
			return
		}
		targets, _ := s.Body["Targets"].([]any)
		mu.Lock()
		sizes = append(sizes, len(targets))
		mu.Unlock()
		for _, x := range targets {
			rec := x.(map[string]any)
			if rec["@odata.type"] != "Microsoft.Dynamics.CRM.contact" {
				mu.Lock()
				badType++
				mu.Unlock()
			}
			if rec["lastname"] == "bad" {
				dvError(w, 400, "0x80044331", "A validation error occurred.")
				return
			}
		}
		writeJSON(w, 200, map[string]any{"Ids": make([]string, len(targets))})
	})
	c, _ := f.newClient(t, func(o *Options) { o.BulkChunkSize = 10 })
	recs := make([]Record, 35)
	for i := range recs {
		recs[i] = Record{"contactid": fmt.Sprintf("%d", i), "lastname": "ok"}
	}
	recs[12]["lastname"] = "bad"
	recs[31]["lastname"] = "bad"
	err := c.UpsertMultiple(context.Background(), "contacts", "contact", recs)
	var be *BulkError
	if !errors.As(err, &be) {
		t.Fatalf("err = %v, want *BulkError", err)
	}
	if len(be.Chunks) != 2 || be.Chunks[0].Start != 10 || be.Chunks[0].End != 20 || be.Chunks[1].Start != 30 || be.Chunks[1].End != 35 {
		t.Fatalf("failed chunks = %+v", be.Chunks)
	}
	var de *Error
	if !errors.As(err, &de) || de.Code != "0x80044331" || IsRetryable(be.Chunks[0].Err) {
		t.Fatalf("chunk error = %v", be.Chunks[0].Err)
	}
	if !strings.Contains(err.Error(), "rows 10-19") {
		t.Fatalf("error text = %q", err)
	}
	sort.Ints(sizes)
	if fmt.Sprint(sizes) != "[5 10 10 10]" || badType != 0 {
		t.Fatalf("chunk sizes %v, targets without @odata.type %d", sizes, badType)
	}
	for _, r := range recs {
		if _, ok := r["@odata.type"]; ok {
			t.Fatal("caller's record was modified")
		}
	}
}

func TestCreateMultipleReturnsIdsInOrder(t *testing.T) {
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		s := readSeen(r)
		if s.Path == "sdkmessagefilters" {
			writeJSON(w, 200, map[string]any{"value": []any{map[string]any{"sdkmessagefilterid": "f"}}})
			return
		}
		targets, _ := s.Body["Targets"].([]any)
		ids := make([]string, len(targets))
		for i, x := range targets {
			ids[i] = "id-" + x.(map[string]any)["name"].(string)
		}
		writeJSON(w, 200, map[string]any{"Ids": ids})
	})
	c, _ := f.newClient(t, func(o *Options) { o.BulkChunkSize = 3 })
	recs := make([]Record, 8)
	for i := range recs {
		recs[i] = Record{"name": fmt.Sprint(i)}
	}
	ids, err := c.CreateMultiple(context.Background(), "products", "product", recs)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if id != fmt.Sprintf("id-%d", i) {
			t.Fatalf("ids = %v", ids)
		}
	}
}

// RowErrors spreads a bulk call's outcome over its rows: the rows of a failed chunk get
// that chunk's error, the others nil; any other error is every row's.
func TestRowErrors(t *testing.T) {
	if errs := RowErrors(nil, 3); len(errs) != 3 || errs[0] != nil || errs[1] != nil || errs[2] != nil {
		t.Errorf("success: %v", errs)
	}
	a, b := errors.New("chunk a"), errors.New("chunk b")
	be := &BulkError{Message: "UpdateMultiple invoices", Chunks: []ChunkError{{Start: 1, End: 3, Err: a}, {Start: 4, End: 9, Err: b}}}
	got := RowErrors(fmt.Errorf("wrapped: %w", be), 6)
	want := []error{nil, a, a, nil, b, b}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d: %v, want %v", i, got[i], want[i])
		}
	}
	other := errors.New("no chunk")
	for i, err := range RowErrors(other, 2) {
		if err != other {
			t.Errorf("row %d: %v, want the call's error", i, err)
		}
	}
}
