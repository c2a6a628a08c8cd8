package dataverse

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
)

func TestNonIdempotent(t *testing.T) {
	for _, c := range []struct {
		method, path string
		body         Record
		want         bool
	}{
		{"POST", "ConvertSalesOrderToInvoice", nil, true},
		{"POST", "Microsoft.Dynamics.CRM.ConvertSalesOrderToInvoice", nil, true},
		{"POST", "contacts", Record{"lastname": "x"}, true},
		{"POST", "contacts", Record{"contactid": "6f0c…", "lastname": "x"}, false},
		{"POST", "transactioncurrencies", Record{"transactioncurrencyid": "id"}, false},
		{"POST", "customeraddresses", Record{"customeraddressid": "id"}, false},
		{"POST", "salesorders(1)/order_details", Record{"salesorderdetailid": "id"}, true},
		{"POST", "$1/order_details", Record{}, true},
		{"POST", "products(1)/Microsoft.Dynamics.CRM.PublishProductHierarchy", Record{}, false},
		{"POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", Record{}, false},
		{"POST", "FulfillSalesOrder", Record{}, false},
		{"POST", "$batch", nil, false},
		{"PATCH", "contacts(1)", Record{}, false},
		{"DELETE", "contacts(1)", nil, false},
	} {
		if got := nonIdempotent(c.method, c.path, c.body); got != c.want {
			t.Errorf("nonIdempotent(%s %s %v) = %v, want %v", c.method, c.path, c.body, got, c.want)
		}
	}
}

// A create without its primary key is sent once after a 503 (a second run makes a second
// row) and reports an unknown outcome; with its key it is sent again; a 429 (the request
// did not run) is waited out and sent again either way.
func TestCreateWithoutKeySentOnce(t *testing.T) {
	var calls atomic.Int64
	var throttle atomic.Bool
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if throttle.Load() && n == 1 {
			w.Header().Set("Retry-After", "1")
			dvError(w, 429, "0x80072322", "Number of requests exceeded the limit.")
			return
		}
		if !throttle.Load() && n == 1 {
			dvError(w, 503, "0x80040216", "Service Unavailable")
			return
		}
		w.Header().Set("OData-EntityId", f0URL(r)+"contacts(00000000-0000-0000-0000-000000000001)")
		w.WriteHeader(204)
	})
	c, _ := f.newClient(t, nil)
	ctx := context.Background()
	_, err := c.Create(ctx, "contacts", Record{"lastname": "x"})
	if !IsOutcomeUnknown(err) || calls.Load() != 1 {
		t.Fatalf("without key: %v after %d calls, want an unknown outcome after 1", err, calls.Load())
	}
	calls.Store(0)
	if _, err := c.Create(ctx, "contacts", Record{"contactid": "00000000-0000-0000-0000-000000000001", "lastname": "x"}); err != nil || calls.Load() != 2 {
		t.Fatalf("with key: %v after %d calls, want success after 2", err, calls.Load())
	}
	calls.Store(0)
	throttle.Store(true)
	if _, err := c.ConvertSalesOrderToInvoice(ctx, "00000000-0000-0000-0000-000000000002"); err != nil || calls.Load() != 2 {
		t.Fatalf("conversion after a 429: %v after %d calls, want success after 2", err, calls.Load())
	}
}

func f0URL(r *http.Request) string { return "https://" + r.Host + APIPath }

// After a timeout a table's requests are capped at half the size that timed out; after
// sizeRegrow requests went through at the cap it doubles, back to the client's bulk size.
func TestBulkSizeAfterTimeouts(t *testing.T) {
	c := &Client{chunk: 100, log: func(string) {}}
	c.sized("contact", 100, true)
	if got := c.RowsPerRequest("contact"); got != 50 {
		t.Fatalf("after a timeout at 100: %d", got)
	}
	if got := c.RowsPerRequest("account"); got != 100 {
		t.Fatalf("another table: %d", got)
	}
	for range sizeRegrow - 1 {
		c.sized("contact", 50, false)
	}
	c.sized("contact", 10, false) // a smaller request (a chunk's tail) does not count
	if got := c.RowsPerRequest("contact"); got != 50 {
		t.Fatalf("before %d successes: %d", sizeRegrow, got)
	}
	c.sized("contact", 50, false)
	if got := c.RowsPerRequest("contact"); got != 100 {
		t.Fatalf("after %d successes: %d, want the bulk size again", sizeRegrow, got)
	}
}
