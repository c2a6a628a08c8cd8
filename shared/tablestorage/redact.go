package tablestorage

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// redactPolicy keeps a SAS signature out of errors. A request that fails below HTTP (DNS,
// a refused or reset connection) comes back as a *url.Error whose text holds the whole
// request URL, and with a SharedAccessSignature connection string that URL's query is the
// SAS token; the error would reach the logs, the status page and the failure records.
// The service's own error answers (4xx, 5xx) don't repeat the query.
type redactPolicy struct{}

func (redactPolicy) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	return resp, redactURL(err)
}

// redactedError is an error whose text had a URL's query taken out; it unwraps to the
// original, so errors.Is and errors.As see what they saw before.
type redactedError struct {
	err error
	msg string
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactURL returns err with the query of the *url.Error it carries taken out of its
// text.
func redactURL(err error) error {
	var ue *url.Error
	if err == nil || !errors.As(err, &ue) {
		return err
	}
	i := strings.IndexByte(ue.URL, '?')
	if i < 0 {
		return err
	}
	bare := ue.URL[:i] + "?…"
	// *url.Error quotes its URL (%q); other layers may print it as it is.
	msg := strings.ReplaceAll(err.Error(), strconv.Quote(ue.URL), strconv.Quote(bare))
	return &redactedError{err: err, msg: strings.ReplaceAll(msg, ue.URL, bare)}
}
