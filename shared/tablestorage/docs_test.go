package tablestorage

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/nopsync/nopsync/shared/state"
)

// countingTransport counts the requests sent, by method and path.
type countingTransport struct {
	mu   sync.Mutex
	reqs []string
}

func (c *countingTransport) Do(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.reqs = append(c.reqs, req.Method+" "+req.URL.Path)
	c.mu.Unlock()
	return http.DefaultClient.Do(req)
}

func (c *countingTransport) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.reqs
	c.reqs = nil
	return r
}

// TestSaveDocsInTransactions: 150 docs of one kind, two of them conflicting creates, go
// in entity-group transactions: 100 and 50 docs, each sent once more without the doc the
// service named. No doc is written on its own.
func TestSaveDocsInTransactions(t *testing.T) {
	tr := &countingTransport{}
	s := newTestStore(t, Options{ClientOptions: &aztables.ClientOptions{ClientOptions: policy.ClientOptions{Transport: tr}}})
	ctx := context.Background()
	for _, k := range []string{"sku-10", "sku-120"} {
		if err := s.SaveDoc(ctx, &state.Doc{Kind: "productnumber", Key: k, Value: []byte("first")}); err != nil {
			t.Fatal(err)
		}
	}
	tr.take()
	var docs []*state.Doc
	for i := range 150 {
		docs = append(docs, &state.Doc{Kind: "productnumber", Key: "sku-" + strconv.Itoa(i), Value: []byte(strconv.Itoa(i))})
	}
	errs := s.SaveDocs(ctx, docs)
	for i, err := range errs {
		if conflict := i == 10 || i == 120; conflict != errors.Is(err, state.ErrConflict) {
			t.Errorf("doc %d: %v (conflict expected: %v)", i, err, conflict)
		}
	}
	reqs := tr.take()
	batches := 0
	for _, r := range reqs {
		if strings.HasSuffix(r, "/$batch") {
			batches++
		} else {
			t.Errorf("request %s: want only $batch requests", r)
		}
	}
	if batches != 4 {
		t.Errorf("%d $batch requests, want 4 (two transactions, each once more without its conflict): %v", batches, reqs)
	}
	for i, d := range docs {
		if i == 10 || i == 120 {
			continue
		}
		got, err := s.GetDoc(ctx, d.Kind, d.Key)
		if err != nil || got.ETag != d.ETag || string(got.Value) != strconv.Itoa(i) {
			t.Fatalf("doc %d: %+v, %v; SaveDocs gave ETag %q", i, got, err, d.ETag)
		}
	}
}

// TestSaveDocsAfterTableDropped: docs saved together into a table dropped behind the
// store's back (a wiped state table) make the table again and are all saved; one that
// still carries a pre-drop ETag conflicts.
func TestSaveDocsAfterTableDropped(t *testing.T) {
	s := newTestStore(t, Options{})
	ctx := context.Background()
	old := &state.Doc{Kind: "productnumber", Key: "old", Value: []byte("1/1")}
	if err := s.SaveDoc(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := s.svc.DeleteTable(ctx, s.table, nil); err != nil {
		t.Fatal(err)
	}
	docs := []*state.Doc{
		{Kind: "productnumber", Key: "a", Value: []byte("1/2")},
		{Kind: "productnumber", Key: "b", Value: []byte("1/3")},
		{Kind: "productnumber", Key: "old", Value: []byte("1/4"), ETag: old.ETag},
	}
	errs := s.SaveDocs(ctx, docs)
	for i, d := range docs[:2] {
		if errs[i] != nil {
			t.Fatalf("doc %s after the drop: %v", d.Key, errs[i])
		}
		got, err := s.GetDoc(ctx, d.Kind, d.Key)
		if err != nil || got.ETag != d.ETag {
			t.Fatalf("doc %s: %+v, %v; SaveDocs gave ETag %q", d.Key, got, err, d.ETag)
		}
	}
	if !errors.Is(errs[2], state.ErrConflict) {
		t.Fatalf("doc with a pre-drop ETag: %v, want ErrConflict", errs[2])
	}
}
