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
