package dataverse

import (
	"context"
	"net/http"
	"strings"
	"testing"
)

func TestWhoAmIAuthenticatesWithClientCredentials(t *testing.T) {
	var got http.Header
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		if r.Method != http.MethodGet || r.URL.Path != APIPath+"WhoAmI" {
			dvError(w, 404, "0x8006088a", "Resource not found for the segment "+r.URL.Path)
			return
		}
		writeJSON(w, 200, map[string]any{"UserId": "u-1", "BusinessUnitId": "bu-1", "OrganizationId": "org-1"})
	})
	c, logs := f.newClient(t, nil)
	w, err := c.WhoAmI(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if w != (WhoAmI{UserID: "u-1", BusinessUnitID: "bu-1", OrganizationID: "org-1"}) {
		t.Fatalf("WhoAmI = %+v", w)
	}
	for k, v := range map[string]string{"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"} {
		if got.Get(k) != v {
			t.Errorf("header %s = %q, want %q", k, got.Get(k), v)
		}
	}
	if f.tokenCount() != 1 || got.Get("Authorization") != "Bearer "+f.tokens[0] {
		t.Fatalf("Authorization = %q, tokens %v", got.Get("Authorization"), f.tokens)
	}
	form := f.tokenForms[0]
	// MSAL appends "openid offline_access profile"
	if strings.Fields(form["scope"])[0] != f.srv.URL+"/.default" || form["client_id"] != f.client || form["grant_type"] != "client_credentials" {
		t.Fatalf("token request form = %v", form)
	}
	// a second call reuses the cached token
	if _, err := c.WhoAmI(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.tokenCount() != 1 {
		t.Fatalf("token requests = %d, want 1", f.tokenCount())
	}
	if l := logs.all(); !strings.Contains(l, "GET /api/data/v9.2/WhoAmI 200") || strings.Contains(l, f.tokens[0]) || strings.Contains(l, f.secret) {
		t.Fatalf("log lines: %s", l)
	}
}
