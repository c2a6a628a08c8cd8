// Package pictures builds the HTTP client that downloads product pictures from the URLs
// the store's events name (SYNC_IMAGES). Those URLs come from outside, so the client
// fetches only from the public internet: it refuses loopback, link-local (169.254.0.0/16,
// where cloud metadata and managed-identity endpoints live), private, unique-local,
// unspecified, multicast and other special-purpose addresses (RFC 6890), Azure's platform
// address 168.63.129.16, and the handler's own port. The check runs when a connection is
// dialled (net.Dialer.Control), on the address actually connected to, so a name that
// resolves inward and a redirect that points inward are refused as well. Only http and
// https on ports 80 and 443 are fetched, with a bounded number of redirects and a time
// limit; the caller caps the size it reads.
package pictures

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options configures the client. Production code sets DenyPorts at most; the Allow fields
// exist for tests, whose servers listen on loopback ports.
type Options struct {
	// Timeout bounds a whole fetch, redirects and body included (default 15 s).
	Timeout time.Duration
	// MaxRedirects is how many redirects are followed (default 3).
	MaxRedirects int
	// DenyPorts are refused on every address: the handler's own ports.
	DenyPorts []int

	// AllowPrefixes lets addresses in these prefixes through although they are internal.
	// Tests only.
	AllowPrefixes []netip.Prefix
	// AllowAnyPort lets any port through, not only 80 and 443. Tests only.
	AllowAnyPort bool
	// Lookup resolves a host name (default net.DefaultResolver.LookupNetIP). Tests use it
	// to make names resolve to chosen addresses without DNS.
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

// RefusedError says why a fetch was refused before any byte was sent.
type RefusedError struct {
	Target string // the URL or address refused
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("picture fetch refused: %s: %s", e.Target, e.Reason)
}

// NewClient returns the picture client. It never uses a proxy: the address checked is the
// address connected to.
func NewClient(o Options) *http.Client {
	if o.Timeout <= 0 {
		o.Timeout = 15 * time.Second
	}
	if o.MaxRedirects <= 0 {
		o.MaxRedirects = 3
	}
	if o.Lookup == nil {
		o.Lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	p := &policy{o: o}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error { return p.checkAddr(address) }}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            p.dial(dialer),
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  o.Timeout,
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConns:           16,
		IdleConnTimeout:        90 * time.Second,
		ForceAttemptHTTP2:      true,
	}
	return &http.Client{
		Transport: checkURL{p, tr},
		Timeout:   o.Timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > o.MaxRedirects {
				return &RefusedError{Target: Shown(req.URL.String()), Reason: fmt.Sprintf("more than %d redirects", o.MaxRedirects)}
			}
			return p.checkURL(req.URL)
		},
	}
}

type policy struct{ o Options }

// checkURL allows http and https URLs on the allowed ports.
func (p *policy) checkURL(u *url.URL) error {
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return &RefusedError{Target: Shown(u.String()), Reason: "only http and https are fetched"}
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[scheme]
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return &RefusedError{Target: Shown(u.String()), Reason: "malformed port"}
	}
	return p.checkPort(Shown(u.String()), n)
}

func (p *policy) checkPort(target string, port int) error {
	if slices.Contains(p.o.DenyPorts, port) {
		return &RefusedError{Target: target, Reason: "the app's own port"}
	}
	if !p.o.AllowAnyPort && port != 80 && port != 443 {
		return &RefusedError{Target: target, Reason: "only ports 80 and 443 are fetched"}
	}
	return nil
}

// checkAddr runs on the resolved address right before each connection is made.
func (p *policy) checkAddr(address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &RefusedError{Target: address, Reason: "not an IP address and port"}
	}
	if err := p.checkPort(address, int(ap.Port())); err != nil {
		return err
	}
	a := ap.Addr().Unmap()
	for _, pre := range p.o.AllowPrefixes {
		if pre.Contains(a) {
			return nil
		}
	}
	if why := Internal(a); why != "" {
		return &RefusedError{Target: address, Reason: why + "; only public addresses are fetched"}
	}
	return nil
}

// dial resolves the host with Lookup and dials its addresses in turn; the dialer's
// Control checks each one.
func (p *policy) dial(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
			ips = []netip.Addr{ip}
		} else if ips, err = p.o.Lookup(ctx, host); err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("resolve %s: no address", host)
		}
		var first error
		for _, ip := range ips {
			c, err := d.DialContext(ctx, network, net.JoinHostPort(ip.Unmap().String(), port))
			if err == nil {
				return c, nil
			}
			if first == nil {
				first = err
			}
			var refused *RefusedError
			if errors.As(err, &refused) && host != ip.String() {
				// Say which name led inward.
				first = &RefusedError{Target: host + " (" + refused.Target + ")", Reason: refused.Reason}
			}
		}
		return nil, first
	}
}

// checkURL checks every request's URL (the first one and each redirect) before it is sent.
type checkURL struct {
	p    *policy
	next http.RoundTripper
}

func (c checkURL) RoundTrip(r *http.Request) (*http.Response, error) {
	if err := c.p.checkURL(r.URL); err != nil {
		return nil, err
	}
	return c.next.RoundTrip(r)
}

// special are special-purpose ranges (RFC 6890 and the IANA registries it set up) that
// are not public unicast space, beyond those netip classifies itself.
var special = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network"`},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space (RFC 6598)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	// Azure's platform address: DNS, health probes and the host agent
	// (https://learn.microsoft.com/azure/virtual-network/what-is-ip-address-168-63-129-16).
	{netip.MustParsePrefix("168.63.129.16/32"), "Azure's platform address"},
	{netip.MustParsePrefix("100::/64"), "discard-only"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
}

// nat64 embeds an IPv4 address in its last four bytes (RFC 6052).
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// Internal says why a is not a public unicast address, or "" when it is.
func Internal(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return "not an address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "a link-local address (cloud metadata and identity endpoints)"
	case a.IsPrivate():
		return "a private address"
	case a.IsUnspecified():
		return "the unspecified address"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "a multicast address"
	}
	if a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return "the broadcast address"
	}
	for _, s := range special {
		if s.prefix.Contains(a) {
			return "a special-purpose address: " + s.why
		}
	}
	if nat64.Contains(a) {
		b := a.As16()
		if why := Internal(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})); why != "" {
			return "a NAT64 address of " + why
		}
	}
	return ""
}

// Shown is a picture URL as logs, errors and the status page show it: a userinfo password
// hidden (url.URL.Redacted) and the query, which may hold a token (a storage SAS), replaced
// by a short hash of itself, so two URLs that differ only there still show apart.
func Shown(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a picture URL that does not parse)"
	}
	if u.RawQuery != "" {
		sum := sha256.Sum256([]byte(u.RawQuery))
		u.RawQuery = "sha256:" + hex.EncodeToString(sum[:6])
	}
	u.Fragment, u.RawFragment = "", ""
	return u.Redacted()
}
