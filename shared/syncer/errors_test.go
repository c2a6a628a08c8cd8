package syncer

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// errAnswer answers the requests match selects as Dataverse answers an error
// (dataversetest.ErrorAnswer), and passes the others to the simulator.
type errAnswer struct {
	next          *http.Client
	match         func(*http.Request) bool
	status        int
	code, message string
	hits          atomic.Int32
}

func (a *errAnswer) Do(r *http.Request) (*http.Response, error) {
	if a.match(r) {
		a.hits.Add(1)
		return dataversetest.ErrorAnswer(r, a.status, a.code, a.message), nil
	}
	return a.next.Do(r)
}

// contactWrites: every write to the contacts table (single, bulk or $batch is not used
// for one customer).
func contactWrites(r *http.Request) bool {
	return r.Method != http.MethodGet && strings.Contains(r.URL.Path, "/contacts")
}

func newErrAnswer(status int, code, msg string, match func(*http.Request) bool) *errAnswer {
	return &errAnswer{match: match, status: status, code: code, message: msg}
}

// envBehind is a test environment whose Dataverse requests pass ans before the simulator.
func envBehind(t *testing.T, ans *errAnswer) *env {
	e := newEnv(t, envOptions{client: func(co *dataverse.Options) { co.Transport = ans }})
	ans.next = e.srv.HTTPClient()
	return e
}

// deliverCustomer delivers customer id's first event and returns the customer's record
// after it and the delivery's error.
func deliverCustomer(t *testing.T, e *env, id int, email string) (*state.Record, error) {
	ev := customerEvent(t, example(t, "customer-created.json")[0], id, 1, email, nil)
	err := e.deliver(e.eng, state.Customer, ev)
	return e.rec(state.Customer, id), err
}

// Every 403 Dataverse documents is a security setting an admin changes, as PrivilegeDenied
// is: here a secured column the application user's field security profile can't update
// (AttributePermissionUpdateIsMissingDuringUpdate 0x8004F507; Learn, compose-http-requests-
// handle-errors, "403 Forbidden"; web-service-error-codes). The message is acknowledged,
// the entity recorded failed for auto-sync's retry, and the status page says what to
// change, instead of redeliveries, copies and a dead letter.
func TestSecuredColumn403IsASetupProblem(t *testing.T) {
	ans := newErrAnswer(http.StatusForbidden, "0x8004F507",
		"The user doesn't have AttributePrivilegeUpdate and not granted shared access for a secured attribute during update operation",
		contactWrites)
	e := envBehind(t, ans)
	r, err := deliverCustomer(t, e, 42, "ada@example.com")
	t.Logf("403 0x8004F507: hits=%d HandleMessage err=%v", ans.hits.Load(), err)
	t.Logf("record: status=%s transient=%v reason=%q", r.Status, r.Transient, r.Reason)
	if err != nil {
		t.Errorf("a field-security 403 (admin must fix) failed the invocation: %v", err)
	}
	if r.Status != state.Failed || !r.Transient {
		t.Errorf("record %s transient=%v, want failed and retried by auto-sync", r.Status, r.Transient)
	}
	if !strings.Contains(e.eng.Connection(e.ctx).Error, "0x8004F507") && !strings.Contains(strings.ToLower(e.eng.Connection(e.ctx).Error), "secured") {
		t.Errorf("status page names no setup problem: %q", e.eng.Connection(e.ctx).Error)
	}
}

// 501 Not Implemented ("some requested operation isn't implemented"; Learn,
// compose-http-requests-handle-errors): sent again it fails again, so the entity fails for
// good with the reason and the message is acknowledged.
func TestNotImplementedIsPermanent(t *testing.T) {
	ans := newErrAnswer(http.StatusNotImplemented, "", "The requested operation is not implemented.", contactWrites)
	e := envBehind(t, ans)
	r, err := deliverCustomer(t, e, 43, "bob@example.com")
	t.Logf("501: hits=%d HandleMessage err=%v", ans.hits.Load(), err)
	t.Logf("record: status=%s transient=%v reason=%q", r.Status, r.Transient, r.Reason)
	if err != nil || r.Transient {
		t.Errorf("a 501 is retried as transient (invocation failed: %v, record transient=%v)", err != nil, r.Transient)
	}
	if r.Status != state.Failed {
		t.Errorf("record %s, want failed", r.Status)
	}
}

// A chunk of customers whose bulk request Dataverse answers 413 ("the request length is
// too large"; Learn, compose-http-requests-handle-errors) lands in smaller requests: none
// of them fails for good.
func TestChunkAnswered413Lands(t *testing.T) {
	bulkBig := func(r *http.Request) bool {
		if r.Method != http.MethodPost || !strings.Contains(r.URL.Path, "Multiple") && !strings.HasSuffix(r.URL.Path, "$batch") {
			return false
		}
		return r.ContentLength > 3000
	}
	ans := newErrAnswer(http.StatusRequestEntityTooLarge, "", "The request length is too large.", bulkBig)
	e := envBehind(t, ans)
	tmpl := example(t, "customer-created.json")[0]
	var evs []*nop.Event
	for i := 1; i <= 8; i++ {
		evs = append(evs, customerEvent(t, tmpl, 100+i, 1, fmt.Sprintf("c%d@example.test", i), nil))
	}
	err := e.deliver(e.eng, state.Customer, evs...)
	t.Logf("413 hits=%d HandleMessage err=%v", ans.hits.Load(), err)
	bad := 0
	for i := 1; i <= 8; i++ {
		r := e.rec(state.Customer, 100+i)
		if r.Status == state.Failed && !r.Transient {
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d of 8 customers failed for good on a 413 that smaller requests would get past", bad)
	}
}
