package apierror

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestStatusPerCode(t *testing.T) {
	for code, want := range map[Code]int{
		InvalidEvent: 400, InvalidRequest: 400, Unauthorized: 401, NotFound: 404,
		MethodNotAllowed: 405, Conflict: 409, LengthRequired: 411, TooLarge: 413,
		UnsupportedMediaType: 415, Unavailable: 503, Code("no_such_code"): 500,
	} {
		if got := code.Status(); got != want {
			t.Errorf("%s: status %d, want %d", code, got, want)
		}
	}
}

func TestWrite(t *testing.T) {
	rec := httptest.NewRecorder()
	i, f := 2, "data.email"
	Write(rec, &Error{Code: InvalidEvent, Message: "bad", Index: &i, Field: &f}, nil)
	if rec.Code != http.StatusBadRequest || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d %s", rec.Code, rec.Header())
	}
	if got := rec.Body.String(); got != `{"error":{"code":"invalid_event","message":"bad","index":2,"field":"data.email"}}`+"\n" {
		t.Errorf("body %s", got)
	}

	rec = httptest.NewRecorder()
	Write(rec, New(Conflict, "a run is under way"), map[string]any{"runId": "r1"})
	var b struct {
		RunID string `json:"runId"`
		Error Error  `json:"error"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil || rec.Code != 409 || b.RunID != "r1" || b.Error.Code != Conflict || b.Error.Index != nil {
		t.Errorf("%d %s (%v)", rec.Code, rec.Body, err)
	}
}
