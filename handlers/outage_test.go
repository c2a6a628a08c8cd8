package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/delivery"
	"github.com/nopsync/nopsync/shared/state"
)

// tcpProxy forwards a loopback port to a target; down closes the port (connections are
// refused) and every connection through it, up opens it again.
type tcpProxy struct {
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newTCPProxy(tb testing.TB, target string) *tcpProxy {
	tb.Helper()
	p := &tcpProxy{target: target, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	tb.Cleanup(func() { p.down(); p.wg.Wait() })
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.pipe(c)
			}()
		}
	}()
}

func (p *tcpProxy) pipe(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil { // went down meanwhile
		p.mu.Unlock()
		c.Close()
		u.Close()
		return
	}
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); io.Copy(u, c); u.Close() }()
	go func() { defer wg.Done(); io.Copy(c, u); c.Close() }()
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

// down stops listening (new connections are refused) and cuts the open ones.
func (p *tcpProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
}

// up listens on the same address again.
func (p *tcpProxy) up() error {
	var err error
	for range 50 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			p.serve(ln)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("proxy: listen again on %s: %w", p.addr, err)
}

// setDown takes the proxy down, or brings it back up.
func (p *tcpProxy) setDown(t *testing.T, down bool) {
	t.Helper()
	if !down {
		if err := p.up(); err != nil {
			t.Fatal(err)
		}
		return
	}
	p.down()
}

// setOutage starts (down) or ends an outage of kind: "dataverse-503" (sim answers every
// request 503), "dataverse-refused" (dv, the proxy in front of sim, refuses connections) or
// "state-store" (setState takes the state store down or back up).
func setOutage(t *testing.T, kind string, down bool, sim *dataversetest.Server, dv *tcpProxy, setState func(down bool)) {
	t.Helper()
	switch kind {
	case "dataverse-503":
		rate := 0.0
		if down {
			rate = 1
		}
		sim.SetFaults(dataversetest.Faults{Error503Rate: rate})
	case "dataverse-refused":
		dv.setDown(t, down)
	case "state-store":
		setState(down)
	}
}

// outageStore fails every call while down, as a state store that can't be reached.
type outageStore struct {
	state.Store
	down atomic.Bool
}

var errStoreDown = errors.New("state store: dial tcp 127.0.0.1:10002: connect: connection refused")

func (s *outageStore) err() error {
	if s.down.Load() {
		return errStoreDown
	}
	return nil
}
func (s *outageStore) Get(ctx context.Context, e state.Entity, id string) (*state.Record, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.Store.Get(ctx, e, id)
}
func (s *outageStore) Save(ctx context.Context, r *state.Record) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.Store.Save(ctx, r)
}
func (s *outageStore) GetMany(ctx context.Context, e state.Entity, ids []string) (map[string]*state.Record, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.Store.GetMany(ctx, e, ids)
}
func (s *outageStore) SaveMany(ctx context.Context, rs []*state.Record) []error {
	if err := s.err(); err != nil {
		errs := make([]error, len(rs))
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	return s.Store.SaveMany(ctx, rs)
}
func (s *outageStore) Scan(ctx context.Context, e state.Entity, st []state.Status, fn func(*state.Record) error) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.Store.Scan(ctx, e, st, fn)
}
func (s *outageStore) Counts(ctx context.Context) (state.Counts, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.Store.Counts(ctx)
}
func (s *outageStore) GetDoc(ctx context.Context, kind, key string) (*state.Doc, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.Store.GetDoc(ctx, kind, key)
}
func (s *outageStore) SaveDoc(ctx context.Context, d *state.Doc) error {
	if err := s.err(); err != nil {
		return err
	}
	return s.Store.SaveDoc(ctx, d)
}
func (s *outageStore) SaveDocs(ctx context.Context, ds []*state.Doc) []error {
	if err := s.err(); err != nil {
		errs := make([]error, len(ds))
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	return s.Store.SaveDocs(ctx, ds)
}
func (s *outageStore) ListDocs(ctx context.Context, kind string) ([]*state.Doc, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.Store.ListDocs(ctx, kind)
}

// TestOutageCostsNothing: during an outage of Dataverse (every request 503, or
// connection refused) or of the state store, longer than it takes the embedded queue
// (maxDeliveryCount 10, redelivery at once, as Service Bus) to spend every delivery,
// nothing is dead-lettered, and what was accepted lands once it is over, with
// auto-sync off. The policy's delays are scaled down (copies after 0.5–2 s instead of
// 10–60 s); scripts/chaos runs the same with the real delays and outages of 5 and 30
// minutes. The time to land after the outage is printed, not asserted.
func TestOutageCostsNothing(t *testing.T) {
	outage := time.Duration(envInt("NOPSYNC_OUTAGE_TEST_SECONDS", 20)) * time.Second
	for _, kind := range []string{"dataverse-503", "dataverse-refused", "state-store"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			sim := dataversetest.NewServer(dataversetest.Options{})
			defer sim.Close()
			env := simEnv(t, sim, map[string]string{"DATAVERSE_CLIENT_SECRET": sim.ClientSecret(), "AUTO_SYNC_ENABLED": "false"})
			var proxy *tcpProxy
			if kind == "dataverse-refused" {
				proxy = newTCPProxy(t, sim.URL()[len("https://"):])
				env["DATAVERSE_URL"] = "https://" + proxy.addr
				env["AZURE_AUTHORITY_HOST"] = "https://" + proxy.addr + "/"
			}
			store := &outageStore{}
			lo := &localOptions{
				maxDeliveryCount: 10,
				tuneDataverse: func(o *dataverse.Options) {
					o.RootCAs = sim.CertPool()
					o.MaxRetries, o.RetryDelay, o.MaxRetryDelay = 2, 50*time.Millisecond, 500*time.Millisecond
				},
				tuneDelivery: func(o *delivery.Options) {
					o.MinDelay, o.MaxDelay, o.ProbeEvery = 500*time.Millisecond, 2*time.Second, 200*time.Millisecond
				},
				wrapStore: func(s state.Store) state.Store { store.Store = s; return store },
			}
			base := startLocal(t, env, lo)
			send := func(id int) {
				t.Helper()
				if code, body := post(t, base+"/api/events/customer", "application/json", event("customer", "created", id, 1, customerData(id, 1)), nil); code != 202 {
					t.Fatalf("customer %d: %d %v", id, code, body)
				}
			}
			send(100)
			waitFor(t, "the first customer to land", func() bool { return sim.Count("contacts") == 1 })

			setDown := func(down bool) { setOutage(t, kind, down, sim, proxy, store.down.Store) }
			setDown(true)
			start := time.Now()
			const during = 10
			for i := range during {
				send(101 + i)
				time.Sleep(outage / 2 / during)
			}
			time.Sleep(time.Until(start.Add(outage)))
			if n := sim.Count("contacts"); n != 1 {
				t.Errorf("%d contacts during the outage, want the 1 from before", n)
			}
			setDown(false)
			back := time.Now()
			deadline := back.Add(90 * time.Second) // a hang guard, not a speed requirement
			for sim.Count("contacts") < 1+during && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			landed := time.Since(back)
			if n := sim.Count("contacts"); n != 1+during {
				t.Fatalf("%d of %d contacts landed in the 90 s after the outage", n, 1+during)
			}
			_, st := getJSON(t, base+"/api/status")
			dead := 0.0
			for _, q := range st["queues"].(map[string]any) {
				dead += q.(map[string]any)["deadLettered"].(float64)
			}
			if dead != 0 {
				t.Errorf("%v messages dead-lettered by a %s outage of %s", dead, kind, outage)
			}
			t.Logf("%s outage of %s: %d events accepted during it landed %.1f s after it ended; %v dead letters", kind, outage, during, landed.Seconds(), dead)
		})
	}
}
