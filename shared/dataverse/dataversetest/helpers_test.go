package dataversetest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// tc is a tiny Web API client for the simulator's own tests.
type tc struct {
	t     testing.TB
	s     *Server
	token string
}

func newTC(t testing.TB, o Options) *tc {
	t.Helper()
	s := NewServer(o)
	t.Cleanup(s.Close)
	c := &tc{t: t, s: s}
	c.token = c.fetchToken()
	return c
}

// credential builds a real azidentity ClientSecretCredential against the simulator.
func credential(t testing.TB, s *Server, secret string) *azidentity.ClientSecretCredential {
	t.Helper()
	cred, err := azidentity.NewClientSecretCredential(s.TenantID, s.ClientID, secret, &azidentity.ClientSecretCredentialOptions{
		ClientOptions: azcore.ClientOptions{
			Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: s.AuthorityHost()},
			Transport: s.HTTPClient(),
		},
		DisableInstanceDiscovery: true,
	})
	if err != nil {
		t.Fatalf("NewClientSecretCredential: %v", err)
	}
	return cred
}

func (c *tc) fetchToken() string {
	c.t.Helper()
	tok, err := credential(c.t, c.s, c.s.ClientSecret()).GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{c.s.URL() + "/.default"}})
	if err != nil {
		c.t.Fatalf("GetToken: %v", err)
	}
	return tok.Token
}

type res struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (r res) errCode() string {
	e, _ := r.body["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func (r res) errMsg() string {
	e, _ := r.body["error"].(map[string]any)
	s, _ := e["message"].(string)
	return s
}

func (c *tc) do(method, path string, body any, hdr ...string) res {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		switch b := body.(type) {
		case string:
			rd = strings.NewReader(b)
		default:
			buf, _ := json.Marshal(b)
			rd = bytes.NewReader(buf)
		}
	}
	u := path
	if !strings.HasPrefix(u, "https://") {
		u = c.s.URL() + "/api/data/v9.2/" + path
	}
	u = strings.ReplaceAll(u, " ", "%20")
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.s.HTTPClient().Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := res{status: resp.StatusCode, header: resp.Header, raw: raw}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		_ = json.Unmarshal(raw, &r.body)
	}
	return r
}

func (c *tc) must(want int, r res) res {
	c.t.Helper()
	if r.status != want {
		c.t.Fatalf("status %d, want %d: %s", r.status, want, r.raw)
	}
	return r
}

// id extracts the GUID from an OData-EntityId header.
func entityID(r res) string {
	h := r.header.Get("OData-EntityId")
	i := strings.LastIndexByte(h, '(')
	if i < 0 {
		return ""
	}
	return strings.TrimSuffix(h[i+1:], ")")
}
