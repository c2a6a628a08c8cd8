package tablestorage

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
)

type fakeCredential struct {
	mu     sync.Mutex
	scopes []string
}

func (c *fakeCredential) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.scopes = append(c.scopes, o.Scopes...)
	return azcore.AccessToken{Token: "fake-token-for-test", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// recorder answers like a Table service whose table already exists, with its layout row.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (r *recorder) Do(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()
	if req.Method == http.MethodGet {
		return &http.Response{
			StatusCode: http.StatusOK,
			Header:     http.Header{"Content-Type": {"application/json;odata=minimalmetadata"}, "Etag": {`W/"1"`}},
			Body:       io.NopCloser(strings.NewReader(`{"PartitionKey":"layout","RowKey":"shards","Shards":"16"}`)),
			Request:    req,
		}, nil
	}
	body := `{"odata.error":{"code":"TableAlreadyExists","message":{"lang":"en-US","value":"The table specified already exists."}}}`
	return &http.Response{
		StatusCode: http.StatusConflict,
		Header:     http.Header{"Content-Type": {"application/json"}, "X-Ms-Error-Code": {"TableAlreadyExists"}},
		Body:       io.NopCloser(strings.NewReader(body)),
		Request:    req,
	}, nil
}

func TestServiceURL(t *testing.T) {
	if got, want := ServiceURL("nopsyncstate01"), "https://nopsyncstate01.table.core.windows.net/"; got != want {
		t.Fatalf("ServiceURL = %q, want %q", got, want)
	}
}

// TestNewForAccount: the managed-identity constructor talks to
// https://<account>.table.core.windows.net with a bearer token for Storage, and makes
// its table.
func TestNewForAccount(t *testing.T) {
	cred := &fakeCredential{}
	rec := &recorder{}
	o := Options{Table: "mystate", ClientOptions: &aztables.ClientOptions{ClientOptions: policy.ClientOptions{Transport: rec}}}
	s, err := NewForAccount(context.Background(), "nopsyncstate01", cred, o)
	if err != nil {
		t.Fatalf("NewForAccount: %v", err)
	}
	if s.Table() != "mystate" {
		t.Fatalf("table %q", s.Table())
	}
	if len(rec.reqs) != 2 {
		t.Fatalf("%d requests, want 2 (create table, read its layout row)", len(rec.reqs))
	}
	req := rec.reqs[0]
	if req.URL.Scheme != "https" || req.URL.Host != "nopsyncstate01.table.core.windows.net" || req.URL.Path != "/Tables" || req.Method != http.MethodPost {
		t.Fatalf("request %s %s, want POST https://nopsyncstate01.table.core.windows.net/Tables", req.Method, req.URL)
	}
	if got := req.Header.Get("Authorization"); got != "Bearer fake-token-for-test" {
		t.Fatalf("Authorization %q", got)
	}
	if len(cred.scopes) == 0 || cred.scopes[0] != "https://storage.azure.com/.default" {
		t.Fatalf("token scopes %q, want Storage's", cred.scopes)
	}

	for _, bad := range []string{"", "ab", "Upper", "has-dash", strings.Repeat("a", 25), "evil.com/x"} {
		if _, err := NewForAccount(context.Background(), bad, cred, o); err == nil {
			t.Errorf("NewForAccount(%q) succeeded", bad)
		}
	}
	for _, bad := range []string{"1abc", "ab", "has-dash", strings.Repeat("a", 64)} {
		if _, err := NewForAccount(context.Background(), "acct", cred, Options{Table: bad}); err == nil {
			t.Errorf("table name %q accepted", bad)
		}
	}
}

// TestConnectionStringErrorsKeepTheKey: a bad or unreachable connection string gives an
// error that does not repeat the account key.
func TestConnectionStringErrorsKeepTheKey(t *testing.T) {
	const key = "c2VjcmV0LWtleS1mb3ItdGVzdC1vbmx5" // made up for this test
	noRetry := &aztables.ClientOptions{ClientOptions: policy.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1}}}
	for _, cs := range []string{
		"AccountKey=" + key,
		"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + key + ";TableEndpoint=http://127.0.0.1:1/devstoreaccount1;",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := NewFromConnectionString(ctx, cs, Options{ClientOptions: noRetry})
		cancel()
		if err == nil {
			t.Fatalf("connection string %d opened", len(cs))
		}
		if strings.Contains(err.Error(), key) {
			t.Fatalf("error repeats the account key: %v", err)
		}
	}
}
