// Package apierror writes the app's HTTP error answers, for every route (the events
// endpoint, the operations routes, local mode's start-up answer): the body is
// {"error":{"code":...,"message":...}} (docs/events.md, docs/operations.md) and the HTTP
// status follows from the code, here and nowhere else.
package apierror

import (
	"encoding/json"
	"net/http"
)

// Code names what went wrong; clients branch on it.
type Code string

// The codes of the app's answers and the HTTP status each maps to.
const (
	InvalidEvent         Code = "invalid_event"          // 400: an event or the body is wrong
	InvalidRequest       Code = "invalid_request"        // 400: an operations request is wrong
	Unauthorized         Code = "unauthorized"           // 401: signature missing, wrong or too old
	NotFound             Code = "not_found"              // 404
	MethodNotAllowed     Code = "method_not_allowed"     // 405
	Conflict             Code = "conflict"               // 409: another run is under way
	LengthRequired       Code = "length_required"        // 411: the body did not arrive
	TooLarge             Code = "too_large"              // 413
	UnsupportedMediaType Code = "unsupported_media_type" // 415
	Unavailable          Code = "unavailable"            // 503: nothing was done; retry later
)

var statuses = map[Code]int{
	InvalidEvent:         http.StatusBadRequest,
	InvalidRequest:       http.StatusBadRequest,
	Unauthorized:         http.StatusUnauthorized,
	NotFound:             http.StatusNotFound,
	MethodNotAllowed:     http.StatusMethodNotAllowed,
	Conflict:             http.StatusConflict,
	LengthRequired:       http.StatusLengthRequired,
	TooLarge:             http.StatusRequestEntityTooLarge,
	UnsupportedMediaType: http.StatusUnsupportedMediaType,
	Unavailable:          http.StatusServiceUnavailable,
}

// Status is the HTTP status of an answer with code c (500 for a code not listed above).
func (c Code) Status() int {
	if s, ok := statuses[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// Error is the "error" object of an error answer. Index and Field are set for
// invalid_event answers about one event (Index is its position in the array, 0 for a
// single object; Field its JSON path, "" when the event as a whole is wrong), and absent
// for problems with the whole body.
type Error struct {
	Code    Code    `json:"code"`
	Message string  `json:"message"`
	Index   *int    `json:"index,omitempty"`
	Field   *string `json:"field,omitempty"`
}

// New returns an error answer with code and message.
func New(code Code, message string) *Error { return &Error{Code: code, Message: message} }

// Error implements error.
func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Body is the JSON body of every error answer.
type Body struct {
	Error Error `json:"error"`
}

// Marshal returns the status and JSON body of e's answer. extra adds top-level fields
// beside "error" that say what was done before it failed (a run's id, messages replayed).
func Marshal(e *Error, extra map[string]any) (int, []byte) {
	var b []byte
	var err error
	if len(extra) == 0 {
		b, err = json.Marshal(Body{Error: *e})
	} else {
		m := make(map[string]any, len(extra)+1)
		for k, v := range extra {
			m[k] = v
		}
		m["error"] = e
		b, err = json.Marshal(m)
	}
	if err != nil { // an extra value that does not marshal: the error itself still does
		b, _ = json.Marshal(Body{Error: *e})
	}
	return e.Code.Status(), b
}

// Write answers w with e (Content-Type application/json); extra as in Marshal.
func Write(w http.ResponseWriter, e *Error, extra map[string]any) {
	status, b := Marshal(e, extra)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
