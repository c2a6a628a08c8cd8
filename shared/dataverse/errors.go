package dataverse

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/nopsync/nopsync/shared/internal/cut"
)

// Error is a failed Dataverse call: an HTTP error answer, a network failure
// (StatusCode 0) or an authentication failure at the token endpoint (Auth).
// Messages never contain secrets or tokens.
type Error struct {
	Op         string        // e.g. "PATCH contacts(…)": method and resource, no query
	StatusCode int           // HTTP status; 0 for network failures
	Code       string        // Dataverse error code, e.g. "0x80040217"; may be empty
	Message    string        // Dataverse's message
	RetryAfter time.Duration // from Retry-After on 429/503, else 0
	Retryable  bool          // true when resending the same request later can succeed
	Auth       bool          // the app could not authenticate (token endpoint or 401/403 from Dataverse)
	// OutcomeUnknown: a request that must not run twice (not idempotent) got no clear
	// answer (a 5xx, a timeout, a lost connection) and was not sent again. It may have
	// been applied: read Dataverse before doing it again.
	OutcomeUnknown bool
	Err            error // underlying cause (network error, context error, token error)
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("dataverse")
	if e.Op != "" {
		b.WriteString(" ")
		b.WriteString(e.Op)
	}
	if e.Auth {
		b.WriteString(": authentication failed")
	}
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	if e.Code != "" {
		b.WriteString(" [")
		b.WriteString(e.Code)
		b.WriteString("]")
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	if e.OutcomeUnknown {
		b.WriteString(" (outcome unknown: it may have been applied)")
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// asError finds a *Error in err's chain.
func asError(err error) (*Error, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e, true
	}
	return nil, false
}

// IsNotFound reports whether the row (or resource) does not exist (404).
func IsNotFound(err error) bool {
	e, ok := asError(err)
	return ok && e.StatusCode == http.StatusNotFound
}

// IsConflict reports a failed precondition (412): a create-only upsert found
// an existing row, a duplicate key, or an ETag mismatch.
func IsConflict(err error) bool {
	e, ok := asError(err)
	return ok && e.StatusCode == http.StatusPreconditionFailed
}

// IsThrottled reports a service-protection 429 that was still in force when
// the caller's context ran out.
func IsThrottled(err error) bool {
	e, ok := asError(err)
	return ok && e.StatusCode == http.StatusTooManyRequests
}

// IsOutcomeUnknown reports that a request which must not run twice may or may not
// have been applied (see Error.OutcomeUnknown).
func IsOutcomeUnknown(err error) bool {
	e, ok := asError(err)
	return ok && e.OutcomeUnknown
}

// IsAuthFailure reports that the app could not authenticate to Dataverse
// (rejected client secret, unknown client, 401/403 after a fresh token).
func IsAuthFailure(err error) bool {
	e, ok := asError(err)
	return ok && e.Auth
}

// IsRetryable reports whether trying the same operation later can succeed:
// throttling, 5xx, network failures and a context deadline that expired
// while waiting. Validation errors, 404, 412 and auth failures are not.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	if e, ok := asError(err); ok {
		return e.Retryable
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// retryableStatus: statuses that a later identical request may get past.
func retryableStatus(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// IsUnsupported reports whether err is an answer no resend gets past, whatever its size or
// timing: 501 Not Implemented ("some requested operation isn't implemented") and 505 (Learn,
// compose-http-requests-handle-errors). Neither a retry nor a smaller request helps.
func IsUnsupported(err error) bool {
	e, ok := asError(err)
	return ok && (e.StatusCode == http.StatusNotImplemented || e.StatusCode == http.StatusHTTPVersionNotSupported)
}

// unclearStatus: answers after which a request may still have been applied (a
// gateway gave up, or the server failed while or after running it).
func unclearStatus(code int) bool {
	return code == http.StatusRequestTimeout || code >= 500
}

// outcomeUnknown marks err (from a request that must not run twice) as of unknown
// outcome, unless it is an authentication failure, which happens before sending.
func outcomeUnknown(op string, err error) error {
	e, ok := asError(err)
	if !ok {
		return &Error{Op: op, Retryable: errors.Is(err, context.DeadlineExceeded), OutcomeUnknown: true, Err: err}
	}
	if e.Auth || e.StatusCode == http.StatusTooManyRequests || (e.StatusCode >= 400 && !unclearStatus(e.StatusCode)) {
		return err
	}
	e.OutcomeUnknown = true
	return e
}

// errorFromResponse builds an *Error from a Dataverse error answer
// ({"error":{"code","message"}}). body is the already-read response body.
func errorFromResponse(op string, status int, h http.Header, body []byte) *Error {
	e := &Error{Op: op, StatusCode: status, Retryable: retryableStatus(status)}
	var env struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && (env.Error.Code != "" || env.Error.Message != "") {
		e.Code, e.Message = env.Error.Code, env.Error.Message
	} else if len(body) > 0 && !strings.Contains(h.Get("Content-Type"), "json") {
		e.Message = cut.Bytes(strings.TrimSpace(string(body)), 300, "…")
	}
	if h != nil {
		e.RetryAfter = retryAfter(h, time.Now())
	}
	if status == http.StatusUnauthorized {
		e.Auth = true
	}
	return e
}
