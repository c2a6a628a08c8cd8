package pictures

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestInternalAddresses(t *testing.T) {
	refused := []string{
		"127.0.0.1", "127.1.2.3", "::1", "169.254.169.254", "169.254.255.2", "fe80::1",
		"10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "fd00::1", "fc00::1",
		"0.0.0.0", "::", "0.1.2.3", "224.0.0.1", "239.255.255.250", "ff02::1", "255.255.255.255",
		"::ffff:127.0.0.1", "::ffff:169.254.169.254", "100.64.0.1", "168.63.129.16",
		"198.18.0.1", "240.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
	}
	for _, s := range refused {
		if Internal(netip.MustParseAddr(s)) == "" {
			t.Errorf("%s: not refused", s)
		}
	}
	for _, s := range []string{"93.184.216.34", "20.50.2.1", "2606:4700::6810:84e5", "64:ff9b::5db8:d822", "172.32.0.1", "11.0.0.1"} {
		if why := Internal(netip.MustParseAddr(s)); why != "" {
			t.Errorf("%s: refused as %s", s, why)
		}
	}
}

// servers: "public" on 127.0.0.1 (let through by the tests' allow-list) redirecting on
// request, "inward" on 127.0.0.2 (a stand-in for the app's network: not let through).
type servers struct {
	public, inward *httptest.Server
	inwardHits     atomic.Int32
}

func newServers(t *testing.T) *servers {
	t.Helper()
	s := &servers{}
	s.inward = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inwardHits.Add(1)
		io.WriteString(w, "secret from inside")
	}))
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no second loopback address: %v", err)
	}
	s.inward.Listener.Close()
	s.inward.Listener = ln
	s.inward.Start()
	t.Cleanup(s.inward.Close)
	s.public = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/ok.png":
			io.WriteString(w, "picture")
		case r.URL.Path == "/redirect":
			http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
		case r.URL.Path == "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		case r.URL.Path == "/slow":
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.public.Close)
	return s
}

func port(t *testing.T, u string) string {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return pu.Port()
}

// testOptions let the "public" server through, and resolve names without DNS.
func testOptions(names map[string]string) Options {
	return Options{
		AllowPrefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		AllowAnyPort:  true,
		Lookup: func(_ context.Context, host string) ([]netip.Addr, error) {
			if a, ok := names[host]; ok {
				return []netip.Addr{netip.MustParseAddr(a)}, nil
			}
			return nil, fmt.Errorf("no such host %s", host)
		},
	}
}

func get(c *http.Client, u string) (string, error) {
	res, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return string(b), err
}

func wantRefused(t *testing.T, what string, err error, reason string) {
	t.Helper()
	var r *RefusedError
	if !errors.As(err, &r) {
		t.Errorf("%s: %v, want a refusal (%s)", what, err, reason)
		return
	}
	if !strings.Contains(r.Error(), reason) {
		t.Errorf("%s: refused as %q, want %q", what, r.Error(), reason)
	}
}

func TestFetchRefusesInward(t *testing.T) {
	s := newServers(t)
	inwardPort := port(t, s.inward.URL)
	names := map[string]string{"shop.example": "127.0.0.1", "inside.example": "127.0.0.2", "metadata.example": "169.254.169.254"}
	c := NewClient(testOptions(names))

	// The allowed server works, by address and by name: the refusals below are the policy's.
	if body, err := get(c, s.public.URL+"/ok.png"); err != nil || body != "picture" {
		t.Fatalf("allowed server: %q %v", body, err)
	}
	publicByName := "http://shop.example:" + port(t, s.public.URL)
	if body, err := get(c, publicByName+"/ok.png"); err != nil || body != "picture" {
		t.Fatalf("allowed server by name: %q %v", body, err)
	}

	_, err := get(c, s.inward.URL+"/x")
	wantRefused(t, "inward address", err, "loopback")
	_, err = get(c, "http://inside.example:"+inwardPort+"/x")
	wantRefused(t, "name resolving to loopback", err, "inside.example")
	t.Logf("as recorded: %v", err)
	for _, to := range []string{
		s.inward.URL + "/x",                             // redirect to an inward address
		"http://inside.example:" + inwardPort + "/x",    // redirect to a name resolving inward
		"http://metadata.example/metadata/identity",     // name resolving to the metadata address
		"http://169.254.169.254/metadata/instance",      // the metadata address itself
		"http://[::1]:" + inwardPort + "/x",             // IPv6 loopback
		"http://[::ffff:127.0.0.2]:" + inwardPort + "/", // IPv4-mapped
	} {
		_, err := get(c, s.public.URL+"/redirect?to="+url.QueryEscape(to))
		var r *RefusedError
		if !errors.As(err, &r) {
			t.Errorf("redirect to %s: %v, want a refusal", to, err)
		}
	}
	_, err = get(c, s.public.URL+"/redirect?to="+url.QueryEscape("ftp://shop.example/x"))
	wantRefused(t, "redirect to ftp", err, "only http and https")
	_, err = get(c, s.public.URL+"/loop")
	wantRefused(t, "redirect loop", err, "redirects")
	if n := s.inwardHits.Load(); n != 0 {
		t.Errorf("the inward server was reached %d times", n)
	}

	// The handler's own port is refused even on an allowed address.
	own := testOptions(names)
	own.DenyPorts = []int{mustAtoi(t, port(t, s.public.URL))}
	_, err = get(NewClient(own), s.public.URL+"/ok.png")
	wantRefused(t, "the app's own port", err, "own port")

	// By default only ports 80 and 443.
	std := testOptions(names)
	std.AllowAnyPort = false
	_, err = get(NewClient(std), s.public.URL+"/ok.png")
	wantRefused(t, "non-standard port", err, "80 and 443")

	// Defaults: nothing on loopback at all.
	_, err = get(NewClient(Options{Lookup: testOptions(names).Lookup}), "http://shop.example/ok.png")
	wantRefused(t, "defaults, name resolving to loopback", err, "loopback")
}

func TestFetchTimeLimit(t *testing.T) {
	s := newServers(t)
	o := testOptions(nil)
	o.Timeout = 200 * time.Millisecond
	if _, err := get(NewClient(o), s.public.URL+"/slow"); err == nil {
		t.Error("a server that never answers: no error")
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestShownHidesTokens(t *testing.T) {
	for raw, want := range map[string]string{
		"https://cdn.example.com/p/1.png":                     "https://cdn.example.com/p/1.png",
		"https://user:pw@cdn.example.com/p/1.png":             "https://user:xxxxx@cdn.example.com/p/1.png",
		"https://st.blob.core.windows.net/c/1.png?sv=1&sig=s": "https://st.blob.core.windows.net/c/1.png?sha256:",
		"https://cdn.example.com/1.png#frag":                  "https://cdn.example.com/1.png",
		"http://[::1":                                         "(a picture URL that does not parse)",
	} {
		if got := Shown(raw); !strings.HasPrefix(got, want) || strings.Contains(got, "sig=") || strings.Contains(got, "pw@") {
			t.Errorf("Shown(%q) = %q, want %q…", raw, got, want)
		}
	}
	if Shown("https://a.example/1.png?sig=a") == Shown("https://a.example/1.png?sig=b") {
		t.Error("two URLs differing only in their query show alike")
	}
}
